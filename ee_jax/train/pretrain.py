"""The pre-training loop: dataset -> pmapped dense-contrastive steps -> checkpoints, logs.

A restart with the same workdir resumes from the latest complete checkpoint with the same
subsequent batches and random keys (the input pipeline and the augmentation are both pure
functions of (seed, step)). SIGTERM (preemptible TPU VMs) saves a checkpoint and stops.
"""

import json
import os
import signal
import time

import jax
import numpy as np

from ee_jax import augment, checkpoints, losses, models, parallel
from ee_jax.data import contract, datasets, pipeline
from ee_jax.train import metrics_log, optim
from ee_jax.train.pretrain_step import init_state, make_eval_step, make_pretrain_step

STEP_KEYS = (contract.IMAGE, contract.VALID)  # + `index`, which the pipeline always adds


class _StopFlag:
  """Set by SIGTERM; the loop saves and returns at the end of the current step."""

  def __init__(self):
    self.stop = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.stop = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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


def _host(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(parallel.unreplicate(metrics)).items()}


def evaluate(p_eval, p_state, base_keys, config, builder) -> dict:
  """Contrastive metrics on the eval split, averaged over batches (weighted by real tiles)."""
  totals, weight = {}, 0.0
  limit = config.train.eval_batches
  with pipeline.eval_iterator_from_config(config, builder, keys=STEP_KEYS) as it:
    for i, batch in enumerate(it):
      if limit and i >= limit:
        break
      n = float(batch["mask"].sum())
      m = _host(p_eval(p_state, {k: batch[k] for k in (*STEP_KEYS, "index")}, base_keys))
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + v * n
      weight += n
  return {k: v / max(weight, 1.0) for k, v in totals.items()}


def pretrain(config, workdir: str) -> dict:
  """Runs (or resumes) pre-training; returns the last logged train and eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  builder = datasets.prepare(config.data)
  data_meta = dataset_metadata(builder)
  tile_shape = (data_meta["num_dates"], data_meta["tile_size"], data_meta["tile_size"],
                len(data_meta["bands"]))

  model = models.build_pretrain_model(config.model)
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  total = int(config.train.steps)
  tx, schedule = optim.make_optimizer(config.optim, total)
  init_key, base_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = init_state(model, tx, init_key, aug_cfg, tile_shape)
  print(f"Model: {models.count_params(state.params):,} parameters "
        f"(widths {tuple(config.model.widths)}, D={config.model.features}, "
        f"temporal={config.model.temporal}, dtype={config.model.dtype}); "
        f"{jax.device_count()} devices, global batch "
        f"{config.data.per_device_batch * jax.device_count()}")

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
    print(f"Resuming from {ckpt.directory} at step {start}")
  log = metrics_log.MetricsLog(workdir, total)
  log.truncate_after(start)

  mean, std = np.asarray(data_meta["mean"]), np.asarray(data_meta["std"])
  p_step = parallel.pmap_step(
      make_pretrain_step(model, tx, schedule, mean, std, aug_cfg, config.loss), donate_argnums=(0,))
  p_eval = parallel.pmap_step(make_eval_step(model, mean, std, aug_cfg, config.loss))
  p_state, base_keys = parallel.replicate(state), parallel.replicate(base_key)
  global_batch = config.data.per_device_batch * jax.device_count()
  pixels_per_tile = tile_shape[1] * tile_shape[2]
  last = {}
  step = start
  with _StopFlag() as flag, pipeline.train_iterator_from_config(
      config, builder, start_step=start, keys=STEP_KEYS) as batches:
    t0, since = time.time(), start
    for step in range(start + 1, total + 1):
      batch = next(batches)
      p_state, metrics = p_step(p_state, {k: batch[k] for k in (*STEP_KEYS, "index")},
                                base_keys)
      if step % config.train.log_every == 0 or step == total:
        m = _host(metrics)
        dt = max(time.time() - t0, 1e-9)
        m["tiles_per_s"] = (step - since) * global_batch / dt
        m["pixels_per_s"] = m["tiles_per_s"] * pixels_per_tile
        last.update(log.write(step, m))
        t0, since = time.time(), step
      if config.train.eval_every and (step % config.train.eval_every == 0 or step == total):
        last.update(log.write(step, evaluate(p_eval, p_state, base_keys, config, builder),
                              prefix="eval_"))
      if step % config.train.checkpoint_every == 0 or step == total or flag.stop:
        ckpt.save(step, jax.device_get(parallel.unreplicate(p_state)), ckpt_meta)
      if flag.stop:
        print(f"SIGTERM: saved step {step}; rerun the same command to resume")
        break
  ckpt.wait()
  ckpt.close()
  log.close()
  print(f"Checkpoints: {ckpt.directory} (latest step {step}); metrics: {log.path}")
  return last
