"""Peak RSS of this process and of every process it starts, sampled while a build runs.

A Beam DirectRunner build starts its workers as child processes; `ru_maxrss` of the
children gives only the largest of all, so each process's own high-water mark (VmHWM in
/proc, Linux) is read twice a second and its last value kept.
"""

import contextlib
import os
import threading

import psutil


def _hwm_gib(pid: int) -> float | None:
  try:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20   # KiB -> GiB
  except OSError:
    return None
  return None


@contextlib.contextmanager
def watch(interval: float = 0.5):
  """Yields {pid: (command name, peak GiB)}, filled until the block ends."""
  peaks, stop = {}, threading.Event()
  me = psutil.Process(os.getpid())

  def sample():
    while True:
      for proc in [me] + me.children(recursive=True):
        hwm = _hwm_gib(proc.pid)
        if hwm is not None:
          try:
            name = "runner" if proc.pid == me.pid else " ".join(proc.cmdline()[1:3])[:60]
          except psutil.Error:
            name = peaks.get(proc.pid, ("?",))[0]
          peaks[proc.pid] = (name, hwm)
      if stop.wait(interval):
        return

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  try:
    yield peaks
  finally:
    stop.set()
    thread.join()


def report(peaks: dict) -> str:
  return "peak RSS per process: " + "; ".join(
      f"{name} (pid {pid}) {gib:.2f} GiB" for pid, (name, gib) in sorted(peaks.items()))
