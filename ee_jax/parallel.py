"""The one module that owns `jax.pmap` (docs/design.md, "Parallelism and scale").

Train/eval steps are per-device functions using collectives over the axis `AXIS`; they are
wrapped here, and the train state and host batches are laid out here, so moving to
`jax.shard_map` later touches this file only.
"""

from typing import Callable, Sequence

import jax
import numpy as np

AXIS = "batch"


def pmap_step(fn: Callable, axis_name: str = AXIS, donate_argnums: Sequence[int] = (),
              static_broadcasted_argnums: Sequence[int] = ()) -> Callable:
  """`fn` (a per-device step using collectives over `axis_name`) mapped over local devices.

  Every argument carries a leading [local_devices] axis (`replicate`, `shard`).
  """
  return jax.pmap(fn, axis_name=axis_name, donate_argnums=tuple(donate_argnums),
                  static_broadcasted_argnums=tuple(static_broadcasted_argnums))


def local_device_count() -> int:
  return jax.local_device_count()


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
