"""The frozen backbone's features of a run's labelled tiles, computed once for the steps that
train the head alone (LP-FT's linear probe, `freeze_backbone`).

Those steps leave the backbone as it is, so a tile under a given flip/rotation always gives
it the same features: computing them for every (tile, dihedral element) once costs
`tiles x 8` backbone passes, where the steps cost one per example they draw. With few
labelled tiles (a study's 1/16 or 1/64 of the labels) that is a small share: 100 probe
steps of 16 tiles draw 1,600 examples from 8 x 8 = 64 distinct inputs at 1/64. The cached
step takes the same batches, draws the same dihedral element per example
(`finetune_step.dihedral_choice`) and gathers those features instead of running the
backbone: the same update up to the rounding of the backbone's batched arithmetic
(tests/test_probe_features.py).

`finetune.probe_feature_cache`: 'auto' (when the steps would run the backbone on
PASSES_SAVED times more examples than the cache computes, and its copy per device fits in
MAX_CACHE_BYTES; one process only), 'always' (fits only), 'never'.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ee_jax import models
from ee_jax.runtime import distributed, parallel
from ee_jax.data import contract, pipeline
from ee_jax.errors import ConfigError
from ee_jax.train import finetune_step

CHOICES = ("auto", "always", "never")
MAX_CACHE_BYTES = 1 << 30  # per device: every device holds the whole cache
# 'auto' caches when the probe steps would run the backbone on at least this many times
# more examples than the cache computes. Measured on the default study (2 CPU cores,
# docs/scaling.md): 100 steps of 16 examples from 32 or 8 tiles x 8 flips (6x, 25x) ran
# 1.3-1.9 s a run faster cached; from 128 tiles (1.6x) 1.8 s slower (the cache's own
# passes, its memory and a compile for its shape cost more than the 576 passes saved).
PASSES_SAVED = 4
NUM_DIHEDRAL = 8


def cache_bytes(num_tiles: int, views: int, feature_shape, dtype) -> int:
  """Bytes of the features of `num_tiles` tiles x `views`, one example's [H, W, F] each."""
  return num_tiles * views * math.prod(feature_shape) * np.dtype(dtype).itemsize


def should_cache(choice: str, *, num_tiles: int, views: int, steps: int, global_batch: int,
                 nbytes: int, processes: int = 1) -> bool:
  """Whether the head-alone steps take cached features (module docstring)."""
  if choice not in CHOICES:
    raise ConfigError(f"config.finetune.probe_feature_cache: '{choice}' is not one of "
                      f"{list(CHOICES)}")
  if choice == "never" or steps <= 0 or processes != 1 or nbytes > MAX_CACHE_BYTES:
    return False
  return choice == "always" or num_tiles * views * PASSES_SAVED <= steps * global_batch


def make_feature_fn(model):
  """Per-device `fn(backbone_params, image, valid, k, mean, std) -> features [b, H, W, F]`
  of each example under its dihedral element k [b] (the normalisation as arguments, so runs
  that differ in it share the program)."""
  def fn(backbone, image, valid, k, mean, std):
    image = jax.vmap(finetune_step.example_dihedral)(image, k)
    valid = jax.vmap(finetune_step.example_dihedral)(valid, k)
    x, date_valid = finetune_step.prepare_inputs(image, valid, mean, std)
    return model.backbone.apply({"params": backbone}, x, date_valid)
  return fn


def compute(p_feature_fn, backbone, images, valid, mean, std, views: int, per_device: int):
  """features [n, views, H, W, F] on host of tiles images [n, T, H, W, C], valid
  [n, T, H, W], under dihedral elements 0..views-1, by `p_feature_fn` (make_feature_fn's,
  pmapped); `per_device` examples a device at a time (the training step's batch: the same
  batched arithmetic)."""
  n = images.shape[0]
  chunk = per_device * jax.local_device_count()
  tile = np.repeat(np.arange(n), views)
  k = np.tile(np.arange(views, dtype=np.int32), n)
  total = -(-tile.size // chunk) * chunk
  tile = np.concatenate([tile, np.zeros(total - tile.size, tile.dtype)])   # padding: tile 0
  k = np.concatenate([k, np.zeros(total - k.size, np.int32)])
  p_args = parallel.replicate((backbone, np.asarray(mean, np.float32),
                               np.asarray(std, np.float32)))
  feats = None
  for start in range(0, total, chunk):
    sel = slice(start, start + chunk)
    batch = parallel.shard({"image": images[tile[sel]], "valid": valid[tile[sel]],
                            "k": k[sel]})
    out = np.asarray(p_feature_fn(p_args[0], batch["image"], batch["valid"], batch["k"],
                                  p_args[1], p_args[2]))
    out = out.reshape((chunk,) + out.shape[2:])
    if feats is None:   # filled in place: the host holds the features once
      feats = np.empty((total,) + out.shape[1:], out.dtype)
    feats[sel] = out
  return feats[:n * views].reshape((n, views) + feats.shape[1:])


def build(p_feature_fn, backbone, builder, split: str, indices, mean, std, dihedral: bool,
          per_device: int) -> dict:
  """The cache of a run's tiles (`indices` of `split`; None = all), laid out for the cached
  step and replicated on the local devices: features [n, views, H, W, F] and `slot`
  [split size] (a tile's row, -1 for tiles not trained on)."""
  size = builder.info.splits[split].num_examples
  rows = np.arange(size) if indices is None else np.asarray(indices, np.int64)
  tiles = pipeline.read_examples(builder, split, rows, (contract.IMAGE, contract.VALID))
  views = NUM_DIHEDRAL if dihedral else 1
  feats = compute(p_feature_fn, backbone, tiles[contract.IMAGE], tiles[contract.VALID], mean,
                  std, views, per_device)
  slot = np.full(size, -1, np.int32)
  slot[rows] = np.arange(rows.size, dtype=np.int32)
  distributed.log(f"Probe features: {rows.size} tiles x {views} flips/rotations "
                  f"({feats.nbytes / 2**20:.0f} MiB a device) for the head-alone steps")
  return parallel.replicate({"features": feats, "slot": slot})


def make_cached_head_step(model, tx, schedule, num_classes: int, ignore_index: int,
                          class_weights=None, dihedral: bool = True,
                          axis_name: str = parallel.AXIS):
  """Per-device `step(state, batch, base_key, cache) -> (state, metrics)`: the head-alone
  step (finetune_step.make_normalising_step with head_only) on cached features. Every
  example's `index` must have a row in `cache` (`build` of the tiles the run trains on)."""
  def logits_fn(params, batch, cache):
    k = batch["dihedral"] if dihedral else jnp.zeros_like(batch["index"])
    feats = cache["features"][cache["slot"][batch["index"]], k]
    return model.head.apply({"params": params[models.HEAD]}, feats).astype(jnp.float32)

  return finetune_step.make_step(logits_fn, tx, schedule, num_classes, ignore_index,
                                 class_weights, dihedral, axis_name, head_only=True,
                                 needs_image=False)
