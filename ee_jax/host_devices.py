"""Fake CPU devices (`--xla_force_host_platform_device_count`) that cannot deadlock.

Imports nothing from JAX: call `configure` before JAX creates its CPU client.

Why: XLA's CPU client runs every device's part of a pmapped step on one thread pool of
max(cores, devices) threads (`PJRT_NPROC` overrides the core count). A device's launch first
waits, on a pool thread, for a slot among its 32 in-flight computations; the running
collective step needs one pool thread per device at once. With 2 fake devices on 2 cores,
as soon as the host has queued 32 computations on a device, one pool thread waits for a slot
while the other waits in the step's all-gather for the device that has no thread left:
"Expected 2 threads to join the rendezvous, but only 1 of them arrived on time". Load only
makes the host run further ahead. 2 x devices threads cover the worst case (every device
waiting for a slot, plus one thread per device for the collective); the extra threads sleep
when idle.
"""

import os
import re

_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def pool_threads(devices: int) -> int:
  """Thread-pool size at which `devices` fake devices always make progress."""
  return max(os.cpu_count() or 1, 2 * devices)


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
