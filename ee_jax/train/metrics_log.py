"""What a training run logs: metrics.jsonl, TensorBoard event files, progress on screen.

Every logged step goes to <workdir>/metrics.jsonl (one JSON object a line) and, as
scalars, to TensorBoard event files beside it (tensorboardX: no TensorFlow needed;
`tensorboard --logdir <workdir>`). A remote workdir (gs://...) gets metrics.jsonl through
`ee_jax.storage` and no event files (tensorboardX writes local files only): one line says so. On a terminal a tqdm bar follows the steps with the
last metrics; in a log file (stdout not a tty) a plain line per logged step instead, so
logs hold no carriage returns or cursor escapes. Only process 0 writes or prints: other
processes of a multi-host run get a silent logger.
"""

import json
import math
import numbers
import os
import sys
import time

import jax
import numpy as np
import tensorboardX
import tqdm

from ee_jax import storage
from ee_jax.errors import DataError


def _plain(value):
  value = np.asarray(value)
  out = value.item() if value.size == 1 else value.tolist()
  return None if isinstance(out, float) and not math.isfinite(out) else out


class MetricsLog:
  """Appends to <workdir>/metrics.jsonl and TensorBoard; shows progress (see module doc)."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool | None = None,
               stream=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps = total_steps
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._stream = stream or sys.stdout
    self._tty = self._stream.isatty()
    self._start = time.time()
    self._resumed_at = 0
    self._bar = None
    self._tb = None

  def truncate_after(self, step: int) -> None:
    """On resume, drop records past the restored step (a killed run may have logged them);
    TensorBoard is told the same (its events after `step` are purged)."""
    self._resumed_at = step
    if not self.enabled or not storage.exists(self.path):
      return
    kept = [r for r in read_metrics(self.workdir) if r["step"] <= step]
    storage.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def advance(self, step: int) -> None:
    """Called every step: moves the terminal bar (rate-limited by tqdm)."""
    if self.enabled and self._tty:
      bar = self._progress_bar()
      bar.update(step - bar.n)

  def write(self, step: int, metrics: dict, prefix: str = "") -> dict:
    record = {"step": int(step), "time": round(time.time() - self._start, 3)}
    record.update({prefix + k: _plain(v) for k, v in metrics.items()})
    if self.enabled:
      storage.append_text(self.path, json.dumps(record) + "\n")
      self._scalars(step, record)
      self._show(step, record, prefix)
    return record

  def say(self, text: str, every_process: bool = False) -> None:
    """A line of its own (above the bar on a terminal). `every_process`: a fact about
    this host (it stopped, say), printed by each process, not by process 0 alone."""
    if not self.enabled:
      if every_process:
        print(text, file=self._stream, flush=True)
      return
    if self._bar is not None:
      self._bar.write(text, file=self._stream)
    else:
      print(text, file=self._stream, flush=True)

  def _scalars(self, step, record):
    if storage.is_remote(self.workdir):
      if self._tb is None:
        self._tb = False
        self.say(f"{self.workdir} is remote: no TensorBoard event files (tensorboardX writes "
                 f"local files only); metrics.jsonl has every logged value")
      return
    if self._tb is None:
      # purge_step: TensorBoard drops events a killed run logged past the restored step.
      self._tb = tensorboardX.SummaryWriter(
          self.workdir, purge_step=self._resumed_at + 1 if self._resumed_at else None)
    for key, value in record.items():
      if key not in ("step", "time") and isinstance(value, numbers.Real):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()   # every logged step: a killed run keeps its curves

  def _show(self, step, record, prefix):
    keys = [k for k in ("loss", "top1", "tiles_per_s", "miou") if prefix + k in record]
    text = " ".join(f"{prefix}{k}={record[prefix + k]:.4g}" for k in keys
                    if record[prefix + k] is not None)
    if not self._tty:
      print(f"step {step}/{self.total_steps} {text}", file=self._stream, flush=True)
    elif prefix:   # evaluation: kept in the scrollback
      self._progress_bar().write(f"step {step}/{self.total_steps} {text}", file=self._stream)
    else:
      self._progress_bar().set_postfix_str(text, refresh=False)

  def _progress_bar(self):
    if self._bar is None:
      self._bar = tqdm.tqdm(total=self.total_steps, initial=self._resumed_at, unit="step",
                            file=self._stream, dynamic_ncols=True, desc="train")
    return self._bar

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb:
      self._tb.close()
    self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  """All records of <workdir>/metrics.jsonl (empty if none).

  A last line without its newline is the record a crash cut short: it is dropped (a resume
  rewrites the file from the checkpoint's step). Any other line that is not JSON is an error.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not storage.exists(path):
    return []
  lines = storage.read_text(path).split("\n")
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
