"""metrics.jsonl (one JSON object per logged step) and a progress line on terminals.

Only process 0 writes: other processes of a multi-host run get a silent logger.
"""

import json
import math
import os
import sys
import time

import jax
import numpy as np

from ee_jax.errors import DataError


def _plain(value):
  value = np.asarray(value)
  out = value.item() if value.size == 1 else value.tolist()
  return None if isinstance(out, float) and not math.isfinite(out) else out


class MetricsLog:
  """Appends to <workdir>/metrics.jsonl; prints a progress line when stdout is a tty."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps = total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tty = sys.stdout.isatty()
    self._start = time.time()

  def truncate_after(self, step: int) -> None:
    """On resume, drop records past the restored step (a killed run may have logged them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in read_metrics(os.path.dirname(self.path)) if r["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, step: int, metrics: dict, prefix: str = "") -> dict:
    record = {"step": int(step), "time": round(time.time() - self._start, 3)}
    record.update({prefix + k: _plain(v) for k, v in metrics.items()})
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      self._show(step, record, prefix)
    return record

  def _show(self, step, record, prefix):
    keys = [k for k in ("loss", "top1", "tiles_per_s", "miou") if prefix + k in record]
    text = " ".join(f"{prefix}{k}={record[prefix + k]:.4g}" for k in keys
                    if record[prefix + k] is not None)
    line = f"step {step}/{self.total_steps} {text}"
    if self._tty:
      end = "\n" if prefix else ""
      print(f"\r{line:<100}", end=end, flush=True)
    else:
      print(line, flush=True)

  def close(self):
    if self.enabled and self._tty:
      print(flush=True)


def read_metrics(workdir: str) -> list[dict]:
  """All records of <workdir>/metrics.jsonl (empty if none).

  A last line without its newline is the record a crash cut short: it is dropped (a resume
  rewrites the file from the checkpoint's step). Any other line that is not JSON is an error.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if number == len(lines):  # no newline after it: half-written
        break
      raise DataError(f"{path}: line {number} is not a JSON record; fix or delete the "
                      f"file (it only logs the run)") from None
  return records
