"""The one module that owns `jax.pmap` (docs/design.md, "Parallelism and scale").

Train/eval steps are per-device functions using collectives over the axis `AXIS`; they are
wrapped here, and the train state and host batches are laid out here, so moving to
`jax.shard_map` later touches this file only.
"""

import collections
from typing import Callable, Sequence

import jax
import numpy as np

from ee_jax.runtime import host_devices
from ee_jax.errors import ConfigError

AXIS = "batch"


def pmap_step(fn: Callable, axis_name: str = AXIS, donate_argnums: Sequence[int] = (),
              static_broadcasted_argnums: Sequence[int] = ()) -> Callable:
  """`fn` (a per-device step using collectives over `axis_name`) mapped over local devices.

  Every argument carries a leading [local_devices] axis (`replicate`, `shard`). A call waits
  while MAX_CALLS_IN_FLIGHT earlier calls are unfinished (`BoundedDispatch`).
  """
  return BoundedDispatch(jax.pmap(fn, axis_name=axis_name,
                                  donate_argnums=tuple(donate_argnums),
                                  static_broadcasted_argnums=tuple(static_broadcasted_argnums)))


# Calls of one mapped step that may be queued on the devices at once. Why a bound: XLA's CPU
# client runs every device's part of a step on one thread pool (`host_devices`), and a launch
# that finds 32 computations already queued on its device waits for a slot on a pool thread;
# a collective step needs one pool thread per device at once, so a host far ahead of the
# devices could hang them with no spare thread. Two queued calls keep the devices busy (the
# next step is queued while one runs) and stay far below that: each call queues one step and
# a few small output copies per device.
MAX_CALLS_IN_FLIGHT = 2


class BoundedDispatch:
  """A mapped function whose calls wait, before dispatching, until fewer than
  `max_in_flight` earlier calls are unfinished (their outputs ready). Attributes (e.g.
  `lower`) are the wrapped function's."""

  def __init__(self, fn: Callable, max_in_flight: int = MAX_CALLS_IN_FLIGHT):
    if max_in_flight < 1:
      raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    self._fn = fn
    self._max = max_in_flight
    self._pending = collections.deque()   # the outputs of earlier calls, oldest first

  def __call__(self, *args, **kwargs):
    if len(self._pending) >= self._max:
      # Wait for the oldest call that still has an output to wait on: a call whose outputs
      # were all donated to a later call is finished once that later call is.
      while self._pending and not _wait_for(self._pending.popleft()):
        pass
    out = self._fn(*args, **kwargs)
    self._pending.append(out)
    return out

  def __getattr__(self, name):
    return getattr(self._fn, name)


def _wait_for(outputs) -> bool:
  """Blocks until the outputs not yet donated are ready; False if every one was donated."""
  live = [x for x in jax.tree_util.tree_leaves(outputs)
          if isinstance(x, jax.Array) and not x.is_deleted()]
  if live:
    jax.block_until_ready(live)
  return bool(live)


def local_device_count() -> int:
  return jax.local_device_count()


def batch_split() -> int:
  """How many XLA devices share one configured device's batch: the CPU devices launch.py
  makes, one per core (`host_devices.split_cpu`); 1 on GPU/TPU and without a split."""
  return host_devices.cpu_split() if jax.default_backend() == "cpu" else 1


def split_note() -> str:
  """What a log line adds to its device count when the CPU is split; '' when not."""
  k = batch_split()
  return " (one per CPU core, sharing one device's batch)" if k > 1 else ""


def device_batch(per_device_batch: int) -> int:
  """Examples each XLA device takes of `config.data.per_device_batch`."""
  k = batch_split()
  if per_device_batch % k:
    raise ConfigError(f"config.data.per_device_batch={per_device_batch} cannot be split over "
                      f"the {k} CPU devices (one per core); use a multiple of {k}, or "
                      f"--cpu_devices=1")
  return per_device_batch // k


def global_batch(per_device_batch: int) -> int:
  """Examples per step over every process: the configured per-device batch times the
  configured devices (a split CPU counts as one device)."""
  return device_batch(per_device_batch) * jax.device_count()


def replicate(tree, devices=None):
  """One copy of every leaf per device (default: all local ones), laid out for `pmap`."""
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

  def put(x):
    copies = [x] * len(devices)
    stacked = jax.numpy.stack(copies) if isinstance(x, jax.Array) else np.stack(copies)
    return jax.device_put(stacked, sharding)

  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree):
  """The first device's copy of a replicated tree (e.g. to save or log the state)."""
  def first(x):
    if isinstance(x, jax.Array) and len(x.addressable_shards) > 1:
      return x.addressable_shards[0].data[0]  # no cross-device gather of the whole array
    return x[0]

  return jax.tree_util.tree_map(first, tree)


def shard(batch, num_devices: int = 0):
  """Host batch leaves [local_batch, ...] -> [devices, local_batch // devices, ...]."""
  n = num_devices or local_device_count()

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(f"batch of {x.shape[0]} examples cannot be split over {n} devices; "
                       f"use a multiple of {n} (per_device_batch x local devices)")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree_util.tree_map(split, batch)


def unshard(tree):
  """[devices, per_device, ...] -> [devices * per_device, ...] (e.g. per-example outputs)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x).reshape((-1,) + tuple(x.shape[2:])), tree)
