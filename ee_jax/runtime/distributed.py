"""Multi-process runs (TPU VM pod slices, multi-GPU nodes, CPU clusters) via `jax.distributed`.

JAX's own multi-controller runtime is the distributed engine: one Python process per host
(or per GPU), all running the same command; `initialize` connects them before any JAX
computation. After that `jax.device_count()` counts every process's devices, `pmap`'d steps
run over all of them (gradients `pmean`, confusion matrices `psum` across processes), the
input pipeline gives each process its own slice of every global batch, and only process 0
writes logs and reports. See docs/scaling.md for the commands.

Where the coordinator address, process count and id come from, first found wins:
  1. the arguments (launch.py's --coordinator_address, --num_processes, --process_id);
  2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  3. JAX's cluster auto-detection (Cloud TPU VMs, SLURM, Open MPI; mpi4py on request),
     which is why on a TPU VM `initialize()` needs no arguments at all.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from ee_jax.errors import ConfigError

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"   # read by JAX itself too
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${name} must be an integer, got '{value}'") from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> dict:
  """The arguments for `jax.distributed.initialize`: explicit values, else the environment,
  else None (left to JAX's cluster auto-detection)."""
  address = coordinator_address or os.environ.get(ENV_ADDRESS, "").strip() or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if count is not None and count < 1:
    raise ConfigError(f"number of processes must be >= 1, got {count}")
  if index is not None and count is not None and not 0 <= index < count:
    raise ConfigError(f"process id {index} is not in [0, {count})")
  return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> dict:
  """Joins this process to the multi-process run; call once, before any JAX computation.

  With no arguments and no environment variables, JAX detects the cluster (on a Cloud TPU VM
  this is the whole configuration). CPU collectives go through gloo (the CPU backend has no
  cross-process collectives otherwise). Returns {process_index, process_count,
  local_devices, devices}. A second call in the same process is a no-op.
  """
  if jax.distributed.is_initialized():
    return describe()
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = resolve(coordinator_address, num_processes, process_id)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    # JAX names what is missing; say where our values come from.
    raise ConfigError(
        f"jax.distributed.initialize: {e}. Outside Cloud TPU VMs, SLURM and Open MPI, give "
        f"--coordinator_address=HOST:PORT (process 0's host), --num_processes and "
        f"--process_id, or ${ENV_ADDRESS}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}") from e
  info = describe()
  if info["process_index"] == 0:
    print(f"jax.distributed: {info['process_count']} processes, {info['devices']} devices "
          f"({info['local_devices']} per process, {jax.default_backend()})", flush=True)
  return info


def describe() -> dict:
  return {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "local_devices": jax.local_device_count(), "devices": jax.device_count()}


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  """Process 0: the one that writes logs, reports and previews."""
  return jax.process_index() == 0


def log(message: str) -> None:
  """Print on process 0 only: one copy of a progress or summary line, not one per host."""
  if is_primary():
    print(message, flush=True)


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op in a single process)."""
  if is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def primary_first(fn, name: str):
  """`fn()` on process 0, then (once process 0 is done) on the others; returns its result.

  For work that must happen once but whose result every process needs, e.g. building a
  dataset on shared storage: the others then find it complete (and on a host without shared
  storage they build their own identical copy). If `fn` fails on process 0, every process
  raises (process 0 its own error) instead of the others waiting for it forever.
  """
  if not is_multiprocess():
    return fn()
  result, error = None, None
  if is_primary():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below)
      error = e
  if not _all_processes_ok(error is None):
    if error is not None:
      raise error
    raise RuntimeError(f"{name}: failed on process 0 (its log says why); process "
                       f"{jax.process_index()} stops too")
  return result if is_primary() else fn()


def _all_processes_ok(ok: bool) -> bool:
  """Whether `ok` is True on every process; waits for all of them (a barrier)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


def reached_preemption_sync_point(step: int) -> bool:
  """True on every process at the same step once any process got SIGTERM (JAX's preemption
  service); False in a single process. Call it at every step, from the same first step."""
  if not is_multiprocess():
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
    return False
