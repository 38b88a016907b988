"""The pre-training loop: dataset -> pmapped dense-contrastive steps -> checkpoints, logs.

A restart with the same workdir resumes from the latest complete checkpoint with the same
subsequent batches and random keys (the input pipeline and the augmentation are both pure
functions of (seed, step)). SIGTERM (preemptible TPU VMs) saves a checkpoint and stops (see `ee_jax.train.loop`).
"""

import json
import os

import jax
import numpy as np

from ee_jax import augment, checkpoints, models
from ee_jax.runtime import distributed, parallel
from ee_jax.data import contract, datasets, pipeline
from ee_jax.train import loop, optim
from ee_jax.train.pretrain_step import init_state, make_eval_step, make_pretrain_step

STEP_KEYS = (contract.IMAGE, contract.VALID)  # + `index`, which the pipeline always adds


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
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


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


def pretrain(config, workdir: str) -> dict:
  """Runs (or resumes) pre-training; returns the last logged train and eval metrics."""
  os.makedirs(workdir, exist_ok=True)
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
                  f"temporal={config.model.temporal}, dtype={config.model.dtype}); "
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
