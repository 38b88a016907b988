"""Fake CPU devices (`--xla_force_host_platform_device_count`) that cannot deadlock.

Imports nothing from JAX: call `configure` before JAX creates its CPU client.

XLA's CPU client runs every device's part of a pmapped step on one thread pool of
max(cores, devices) threads (`PJRT_NPROC` overrides the core count; cores: those this
process may run on); a collective step needs one pool thread per device at once. A device's
launch first waits, on a pool thread, for a slot among its 32 in-flight computations: with
2 fake devices on 2 cores and a host that has queued 32 computations on a device, one pool
thread waits for a slot while the other waits in the step's all-gather for the device that
has no thread left ("Expected 2 threads to join the rendezvous, but only 1 of them arrived
on time"). Every step here is dispatched through
`parallel.pmap_step`, which never lets the host queue more than
`parallel.MAX_CALLS_IN_FLIGHT` calls, so the pool keeps XLA's own size: one thread per core
(or per device, if more). Twice as many threads (the earlier remedy) also avoid the hang, but
the threads then share the cores by time slices: the study's fine-tuning step ran 140-143 ms
with 2 threads against 157-160 ms with 4 on 2 cores (docs/perf_log.md). The pool's size
changes the order of some of XLA's float32 sums, so a run's losses move at rounding level.
"""

import os
import re

_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def pool_threads(devices: int) -> int:
  """Thread-pool size at which `devices` fake devices make progress, given that the host
  never runs far ahead of them (`parallel.pmap_step`): a thread per device."""
  return max(usable_cores(), devices)


def configure(devices: int = 0, environ=None) -> int:
  """Sets XLA_FLAGS (device count, unless one is set) and PJRT_NPROC (unless set).

  `devices=0` only makes an existing device-count flag safe. Returns the device count.
  """
  env = os.environ if environ is None else environ
  flags = env.get("XLA_FLAGS", "")
  found = _COUNT.search(flags)
  if found:
    devices = int(found.group(1))
  elif devices:
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  if devices > 1 and "PJRT_NPROC" not in env:
    env["PJRT_NPROC"] = str(pool_threads(devices))
  return devices


# One XLA CPU device per core. One XLA CPU device runs a step's operations one after the
# other, each spread over the cores by its own thread pool, and on 2 cores it leaves much of
# the second core idle (measured: the default pre-training step takes 1.57x longer on one
# core than on two). k devices, each taking 1/k of the batch, run k streams of operations
# at once with the same maths: data-parallel, gradients averaged over every device's
# examples, so the global batch and the result are one device's, up to summation order.
# Figures in docs/perf_log.md ("One CPU device per core").
SPLIT_ENV = "EE_JAX_CPU_SPLIT"


def usable_cores() -> int:
  """Cores this process may run on (its CPU affinity; `taskset` and containers narrow it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def devices_for(batch: int, cores: int) -> int:
  """The most CPU devices, at most `cores`, that split `batch` examples evenly."""
  return max(d for d in range(1, max(1, min(cores, batch)) + 1) if batch % d == 0)


def split_cpu(batch: int, devices: int = 0, environ=None) -> int:
  """Makes `devices` XLA CPU devices (0: one per usable core) that each take an equal share
  of a `batch` meant for one device; call it before JAX creates its CPU client.

  A device count the user already set in XLA_FLAGS is kept as it is: those devices stand
  for separate accelerators (tests, multi-device rehearsals), so nothing is split.
  Returns how many devices share the batch (1: no split). Raises ValueError when
  `devices` does not divide `batch`.
  """
  env = os.environ if environ is None else environ
  found = _COUNT.search(env.get("XLA_FLAGS", ""))
  if found:
    configure(environ=env)
    if env.get(SPLIT_ENV) != found.group(1):  # not inherited from a process that split
      env.pop(SPLIT_ENV, None)
    return cpu_split(env)
  if devices < 0:
    raise ValueError(f"the number of CPU devices must be >= 0 (0: one per core), got {devices}")
  devices = devices or devices_for(batch, usable_cores())
  if batch % devices:
    raise ValueError(f"a batch of {batch} tiles cannot be split evenly over {devices} CPU "
                     f"devices; use a per-device batch that is a multiple of {devices}")
  if devices > 1:
    configure(devices, env)
    env[SPLIT_ENV] = str(devices)
  else:
    env.pop(SPLIT_ENV, None)
  return devices


def cpu_split(environ=None) -> int:
  """How many CPU devices share one configured device's batch (`split_cpu`; 1: none)."""
  env = os.environ if environ is None else environ
  return int(env.get(SPLIT_ENV, "1") or 1)
