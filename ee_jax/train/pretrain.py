"""Pre-training, top to bottom: the per-device step and eval step, then the loop around them.

One step: normalise + two views on device (each objective may prepare them: the masked
objective hides parts) -> one forward pass over both views -> each active objective's loss
from it (ee_jax/objectives), the pair objectives on matched pixel pairs of the views with
each view's dihedral undone and keys all_gathered over the axis -> their weighted sum
(`config.loss.weights`) -> pmean'd gradients -> optax update. Randomness comes from
(base_key, state.step, global example index) only, so the result does not depend on the
number of devices.

The loop: dataset -> pmapped steps -> checkpoints, logs (the loop shared with fine-tuning,
ee_jax/train/loop.py). A restart with the same workdir resumes from the latest complete
checkpoint with the same subsequent batches and random keys (the input pipeline and the
augmentation are both pure functions of (seed, step)). SIGTERM (preemptible TPU VMs) saves
a checkpoint and stops.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ee_jax import augment, checkpoints, models, objectives, storage
from ee_jax.data import contract, datasets, pipeline
from ee_jax.errors import ConfigError
from ee_jax.objectives import pairs as pairslib
from ee_jax.runtime import distributed, parallel
from ee_jax.runtime.parallel import AXIS
from ee_jax.train import loop, optim
from ee_jax.train.state import TrainState

ANCHOR_SALT = 0x616E63  # separates the anchor-sampling key stream from the augmentation's
STEP_KEYS = (contract.IMAGE, contract.VALID)  # + `index`, which the pipeline always adds


# ------------------------------------------------------------------------------------------
# The objectives on one batch
# ------------------------------------------------------------------------------------------
def _pairs(out, both, v1, v2, keys, compared, aug_cfg, loss_cfg):
  """The matched pixel pairs of the two views, with the maps `compared` of both views
  brought into the same frame (dihedral undone, shifted crops aligned)."""
  b = v1["image"].shape[0]
  k = both("dihedral")
  maps = {name: augment.undo_dihedral_batch(out[name], k) for name in compared}
  valid = augment.undo_dihedral_batch(both("valid"), k)
  first = {name: x[:b] for name, x in maps.items()}
  second = {name: x[b:] for name, x in maps.items()}
  valid1, valid2 = valid[:b], valid[b:]
  if aug_cfg.crop_shift > 0:  # the views' crops differ: compare the ground pixels both hold
    shift = v1["crop_offset"] - v2["crop_offset"]
    second = {name: augment.align_views(x, valid2, shift)[0] for name, x in second.items()}
    valid2 = augment.align_views(valid2[..., None], valid2, shift)[1]
  anchor_keys = jax.vmap(lambda key: jax.random.fold_in(key, ANCHOR_SALT))(keys)
  idx, idx2, amask = pairslib.sample_pairs(
      anchor_keys, valid1, valid2, num_anchors=loss_cfg.num_anchors,
      positive_jitter=loss_cfg.get("positive_jitter", 0),
      positive_not_self=loss_cfg.get("positive_not_self", False))
  return objectives.Pairs(idx, idx2, amask, valid1.shape[2], first, second)


def _objectives(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
                axis_name):
  """The weighted sum of the active objectives on one batch; returns (loss, metrics).

  One forward pass over both views serves every objective. Objectives may change the views
  first (the masked objective hides parts of each view's input, so the pair objectives see
  the hidden views too, one more augmentation); the pair objectives compare the views on
  the same ground pixels, sampled once for all of them."""
  active = objectives.active(loss_cfg)
  chosen = {name: objectives.get(name) for name in active}
  v1, v2, _ = augment.make_views(base_key, step, batch["index"], batch["image"],
                                 batch["valid"], mean, std, aug_cfg)
  keys = augment.example_keys(base_key, step, batch["index"])
  extras = {}
  for objective in chosen.values():
    v1, v2, more = objective.prepare_views(keys, v1, v2, loss_cfg)
    extras.update(more)
  both = lambda k: jnp.concatenate([v1[k], v2[k]], axis=0)   # noqa: E731
  out = model.apply({"params": params}, both("image"), both("date_valid"), all_outputs=True)
  shared = objectives.Shared(out=out, view=both, extras=extras,
                             mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32))

  # The pair objectives last, after the pairs are sampled (the order the terms were always
  # summed in, so results stay the same to the bit).
  compared = list(dict.fromkeys(o.compares for o in chosen.values()
                                if o.compares is not None))
  terms, metrics = {}, {}
  for name in sorted(chosen, key=lambda n: chosen[n].compares is not None):
    if chosen[name].compares is not None and shared.pairs is None:
      shared.pairs = _pairs(out, both, v1, v2, keys, compared, aug_cfg, loss_cfg)
    terms[name], m = chosen[name].loss(shared, loss_cfg, axis_name)
    metrics.update(m)
  loss = sum(active[name] * terms[name] for name in terms)
  # Each term is this device's share, its pmean the global value: so is the logged total.
  metrics["loss"] = jax.lax.stop_gradient(
      loss if axis_name is None else jax.lax.pmean(loss, axis_name))
  return loss, metrics


# ------------------------------------------------------------------------------------------
# The per-device steps (wrap them with `parallel.pmap_step`)
# ------------------------------------------------------------------------------------------
# Batch (per device): image uint16 [b, T, H, W, C], valid bool [b, T, H, W], index int [b]
# (global example indices).
def make_pretrain_step(model, tx, schedule, mean, std, aug_cfg: augment.AugmentConfig,
                       loss_cfg, axis_name: str = AXIS):
  """Per-device `step(state, batch, base_key) -> (state, metrics)`.

  metrics (pmean'd): loss (the weighted total), each objective's own (infonce, pos_cos,
  neg_cos, top1, anchors; masked*; vicreg_*; proto*), grad_norm, lr (of this step).
  """
  def loss_fn(params, batch, base_key, step):
    return _objectives(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
                       axis_name)

  def step_fn(state: TrainState, batch, base_key):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, base_key, state.step)
    grads = jax.lax.pmean(grads, axis_name)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    return state.apply_gradients(grads, tx), jax.lax.pmean(metrics, axis_name)

  return step_fn


def make_eval_step(model, mean, std, aug_cfg: augment.AugmentConfig, loss_cfg,
                   axis_name: str = AXIS):
  """Per-device `eval_step(state, batch, base_key) -> metrics`: the same metrics without an
  update; views and anchors use step 0, so every evaluation sees the same ones."""
  def eval_fn(state: TrainState, batch, base_key):
    _, metrics = _objectives(model, state.params, batch, base_key, 0, mean, std, aug_cfg,
                             loss_cfg, axis_name)
    return jax.lax.pmean(metrics, axis_name)

  return eval_fn


def init_state(model, tx, key, aug_cfg: augment.AugmentConfig, tile_shape) -> TrainState:
  """A fresh TrainState for tiles shaped (T, H, W, C) (the views' shape fixes the model's)."""
  t, s, _, c = augment.view_shape(aug_cfg, tile_shape)
  params = models.init_params(model, key, (1, t, s, s, c), with_valid=True)
  return TrainState.create(params, tx)


# ------------------------------------------------------------------------------------------
# The loop: data, checkpoints, evaluation
# ------------------------------------------------------------------------------------------
def dataset_metadata(builder) -> dict:
  """What a checkpoint must carry about its data: bands, statistics, tile layout."""
  meta = builder.info.metadata
  return {
      "bands": list(meta[contract.META_BANDS]),
      "mean": list(meta[contract.META_MEAN]),
      "std": list(meta[contract.META_STD]),
      "gsd": meta.get(contract.META_GSD),
      "sensor": meta.get(contract.META_SENSOR),
      "num_dates": int(meta[contract.META_NUM_DATES]),
      "tile_size": int(meta[contract.META_TILE_SIZE]),
      "dataset": os.fspath(builder.data_dir),
      "offsets_removed": meta.get("offsets_removed", {}),
      "resampling": (meta.get(contract.META_PARAMS) or {}).get("resampling"),
  }


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2))


def evaluate(p_eval, p_state, base_keys, config, builder) -> dict:
  """Contrastive metrics on the eval split, averaged over batches (weighted by real tiles).

  The weight is the real tiles of the whole global batch (every process), not of this
  process's slice: the metrics are already global, and every process must agree.
  """
  totals, weight = {}, 0.0
  limit = config.train.eval_batches
  num = builder.info.splits[config.data.eval_split].num_examples
  global_batch = parallel.global_batch(config.data.per_device_batch)
  with pipeline.eval_iterator_from_config(config, builder, keys=STEP_KEYS) as it:
    for i, batch in enumerate(it):
      if limit and i >= limit:
        break
      n = float(min(global_batch, num - i * global_batch))
      m = loop.host_metrics(
          p_eval(p_state, {k: batch[k] for k in (*STEP_KEYS, "index")}, base_keys))
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + v * n
      weight += n
  return {k: v / max(weight, 1.0) for k, v in totals.items()}


def check_pod_batch(config) -> None:
  """A config that fixes its global batch (`pod`, configs/pretrain_pod.py) scaled its
  learning rate for that batch: another device count would train a different batch at the
  wrong rate, so it stops with one line instead."""
  if "pod" not in config:
    return
  got = parallel.global_batch(config.data.per_device_batch)
  if got != config.pod.global_batch:
    raise ConfigError(f"global batch {got} ({jax.device_count()} devices x per-device batch "
                      f"{config.data.per_device_batch}) is not the config's "
                      f"{config.pod.global_batch}: pass :devices={jax.device_count()} to the "
                      f"config (its per-device batch is global batch / devices)")


def pretrain(config, workdir: str) -> dict:
  """Runs (or resumes) pre-training; returns the last logged train and eval metrics."""
  check_pod_batch(config)
  storage.makedirs(workdir)
  write_config(config, workdir)
  builder = distributed.primary_first(lambda: datasets.prepare(config.data), "prepare")
  data_meta = dataset_metadata(builder)
  tile_shape = (data_meta["num_dates"], data_meta["tile_size"], data_meta["tile_size"],
                len(data_meta["bands"]))

  model = models.build_pretrain_model(config.model, config.loss)
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  total = int(config.train.steps)
  tx, schedule = optim.make_optimizer(config.optim, total)
  init_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
  state = init_state(model, tx, init_key, aug_cfg, tile_shape)
  distributed.log(f"Model: {models.count_params(state.params):,} parameters "
                  f"(widths {tuple(config.model.widths)}, D={config.model.features}, "
                  f"backbone={models.backbone_name(config.model)}, "
                  f"dtype={config.model.dtype}); "
                  f"{jax.device_count()} devices{parallel.split_note()}, global batch "
                  f"{parallel.global_batch(config.data.per_device_batch)}")

  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
  ckpt_meta = {"kind": "pretrain", **data_meta, "model": config.model.to_dict(),
               "config": json.loads(config.to_json_best_effort()),
               "code_version": checkpoints.code_version()}
  start = 0
  if ckpt.latest_step() is not None:
    checkpoints.check_bands(ckpt.metadata(), data_meta, os.fspath(ckpt.directory),
                            data_meta["dataset"])
    state, _ = ckpt.restore(state)
    start = int(state.step)
    distributed.log(f"Resuming from {ckpt.directory} at step {start}")
  mean, std = np.asarray(data_meta["mean"]), np.asarray(data_meta["std"])
  p_step = parallel.pmap_step(
      make_pretrain_step(model, tx, schedule, mean, std, aug_cfg, config.loss),
      donate_argnums=(0,))
  p_eval = parallel.pmap_step(make_eval_step(model, mean, std, aug_cfg, config.loss))
  eval_keys = parallel.replicate(jax.random.fold_in(jax.random.PRNGKey(config.seed), 2))
  last, _ = loop.run(
      config, workdir, builder, state, start=start, p_step=p_step, step_keys=STEP_KEYS,
      evaluate=lambda p_state: evaluate(p_eval, p_state, eval_keys, config, builder),
      ckpt=ckpt, ckpt_meta=ckpt_meta, pixels_per_tile=tile_shape[1] * tile_shape[2])
  ckpt.close()
  return last
