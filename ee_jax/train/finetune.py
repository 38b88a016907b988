"""Segmentation fine-tuning from a pre-training checkpoint (or from random weights).

Partial restore: the backbone comes from the pre-training checkpoint, the segmentation head
is new (the projection head is dropped). The backbone's architecture and the input
normalisation come from the checkpoint, so the backbone sees what it was trained on; a band
list or normalisation mismatch with the dataset is an error unless explicitly allowed.
A workdir that already holds fine-tuning checkpoints resumes from the latest one.
Options: LP-FT (`finetune.linear_probe_steps`, finetune_step.make_optimizer) and reporting
the best-on-validation params instead of the last (`finetune.select_best`, finetune_best).
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from ee_jax import checkpoints, models
from ee_jax.runtime import distributed, parallel
from ee_jax.data import contract, datasets, label_fractions
from ee_jax.errors import ConfigError, DataError
from ee_jax.train import evaluate as evaluate_lib
from ee_jax.train import finetune_best, finetune_step, loop, probe_features
from ee_jax.runtime import shared_steps
from ee_jax.train.pretrain import dataset_metadata, write_config
from ee_jax.train.state import TrainState

STEP_KEYS = (contract.IMAGE, contract.VALID, contract.LABEL)


def check_normalisation(ckpt_meta: dict, data_meta: dict, ckpt_path: str, data_path: str):
  """Same per-band statistics (to 0.1 %), or the backbone would see shifted inputs."""
  for key in ("mean", "std"):
    a, b = np.asarray(ckpt_meta[key]), np.asarray(data_meta[key])
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-6):
      raise DataError(
          f"normalisation mismatch: checkpoint {ckpt_path} has band {key} "
          f"{np.round(a, 1).tolist()}, dataset {data_path} has {np.round(b, 1).tolist()}. "
          f"Set config.init.allow_stats_mismatch=True to fine-tune with the checkpoint's "
          f"statistics anyway (e.g. transfer to another region).")


def _restore_backbone(params, backbone, source: str, encoder_only: bool = False):
  want = jax.tree_util.tree_map(np.shape, params["backbone"])
  have = jax.tree_util.tree_map(np.shape, backbone)
  if want != have:
    raise DataError(f"{source}: the checkpoint's backbone does not fit the model "
                    f"(different architecture or input bands/dates)")
  restored = jax.tree_util.tree_map(np.asarray, backbone)
  if encoder_only:  # the decoder (up*, dec*, out*) keeps its fresh initialisation
    restored = {k: (v if k.startswith("enc") else params["backbone"][k])
                for k, v in restored.items()}
  return dict(params, backbone=restored)


def select_tiles(config, builder, workdir: str, num_classes: int, ignore_index: int):
  """The label fraction's train tiles (None = all), recorded in the workdir."""
  ft = config.finetune
  if ft.label_fraction >= 1.0:
    return None
  split = config.data.train_split
  n = builder.info.splits[split].num_examples
  if ft.class_balanced:
    hist = label_fractions.class_histograms(builder, split, num_classes, ignore_index)
    indices = label_fractions.fraction_indices(hist, ft.label_fraction, ft.fraction_seed,
                                               class_balanced=True)
  else:
    indices = label_fractions.fraction_indices(n, ft.label_fraction, ft.fraction_seed)
  if jax.process_index() == 0:
    label_fractions.write_selection(workdir, indices, {
        "fraction": ft.label_fraction, "seed": ft.fraction_seed,
        "class_balanced": ft.class_balanced, "split": split, "split_size": n})
  return indices


def check_selection(config) -> None:
  """select_best needs validation passes, on a split other than the test split."""
  if not config.finetune.select_best:
    return
  if not config.train.eval_every:
    raise ConfigError("config.finetune.select_best needs validation passes: set "
                      "config.train.eval_every > 0")
  if config.data.eval_split == config.finetune.test_split:
    raise ConfigError(f"config.finetune.select_best: config.data.eval_split "
                      f"'{config.data.eval_split}' is the test split; choosing params on it "
                      f"would tune the reported score on the test set")


@dataclasses.dataclass
class Run:
  """One fine-tuning run set up to train from `start`: what `finetune` and
  `finetune_together` (several runs as one program) both need."""
  config: Any
  workdir: str
  builder: Any
  model: Any
  model_cfg: Any
  tx: Any
  schedule: Any
  state: TrainState        # host state at `start` (fresh, restored or resumed)
  start: int
  ckpt: checkpoints.Checkpointer
  ckpt_meta: dict
  indices: Any             # the label fraction's tiles, None = all
  mean: np.ndarray
  std: np.ndarray
  class_weights: Any
  class_names: list
  ignore_index: int

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def prepare_run(config, workdir: str) -> Run:
  """Checks the config, writes config.json, and sets the run up: the model from the
  pre-training checkpoint (or the one being resumed), its state, its tiles."""
  check_selection(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  builder = distributed.primary_first(lambda: datasets.prepare(config.data), "prepare")
  info = builder.info.metadata
  if contract.META_CLASS_NAMES not in info:
    raise DataError(f"{builder.data_dir}: dataset has no labels (class_names); fine-tuning "
                    f"needs a labelled dataset such as landcover_tiles or synthetic_landcover")
  class_names = list(info[contract.META_CLASS_NAMES])
  ignore_index = int(info[contract.META_IGNORE_INDEX])
  data_meta = dataset_metadata(builder)
  k = len(class_names)
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
  resuming = ckpt.latest_step() is not None
  model_cfg, norm, backbone, source = config.model, data_meta, None, "random"

  if resuming:
    previous = ckpt.metadata()
    model_cfg = ml_collections.ConfigDict(previous["model"])
    norm = previous
  elif config.init.checkpoint:
    src_params, src_meta = checkpoints.load_params(config.init.checkpoint)
    source = config.init.checkpoint
    if not config.init.allow_band_mismatch:
      checkpoints.check_bands(src_meta, data_meta, source, data_meta["dataset"])
    if not config.init.allow_stats_mismatch:
      check_normalisation(src_meta, data_meta, source, data_meta["dataset"])
    model_cfg = ml_collections.ConfigDict(src_meta["model"])
    model_cfg.dtype = config.model.dtype         # compute choices are this run's own
    model_cfg.conv_impl = config.model.get("conv_impl", "auto")
    norm = src_meta
    backbone = src_params["backbone"]

  model = models.build_segmentation_model(model_cfg, k)
  total = int(config.train.steps)
  tx, schedule = finetune_step.make_optimizer(config.optim, config.finetune, total)
  t, s, c = data_meta["num_dates"], data_meta["tile_size"], len(data_meta["bands"])
  params = models.init_params(model, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0),
                              (1, t, s, s, c), with_valid=True)
  if backbone is not None:
    params = _restore_backbone(params, backbone, source,
                               encoder_only=config.init.encoder_only)
  state = TrainState.create(params, tx)
  start = 0
  if resuming:
    state, _ = ckpt.restore(state)
    start = int(state.step)
    distributed.log(f"Resuming from {ckpt.directory} at step {start}")
  lp_steps = config.finetune.linear_probe_steps
  distributed.log(f"Fine-tuning: {models.count_params(state.params):,} parameters, "
                  f"{k} classes, init {'from ' + source if source != 'random' else 'random'}"
                  f"{', backbone frozen' if config.finetune.freeze_backbone else ''}"
                  f"{f', head alone for {lp_steps} steps (LP-FT)' if lp_steps else ''}, "
                  f"label fraction {config.finetune.label_fraction:g}")

  indices = select_tiles(config, builder, workdir, k, ignore_index)
  weights = list(config.finetune.class_weights) or None
  if weights is not None and len(weights) != k:
    raise ConfigError(f"config.finetune.class_weights: {len(weights)} weights for {k} classes")
  mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
  ckpt_meta = {**data_meta, "kind": "finetune", "mean": list(mean), "std": list(std),
               "model": model_cfg.to_dict(), "class_names": class_names, "num_classes": k,
               "ignore_index": ignore_index, "init_checkpoint": source,
               "label_fraction": config.finetune.label_fraction,
               "config": json.loads(config.to_json_best_effort()),
               "code_version": checkpoints.code_version()}
  return Run(config, workdir, builder, model, model_cfg, tx, schedule, state, start, ckpt,
             ckpt_meta, indices, mean, std, weights, class_names, ignore_index)


# config.finetune keys that choose a run's tiles or its final evaluation, not its steps.
NOT_IN_STEP = ("label_fraction", "fraction_seed", "class_balanced", "test_split",
               "select_best")


def step_ingredients(config, run: Run) -> dict:
  """Everything a run's fine-tuning steps are built from (the model and its classes, the
  optimiser and schedule, normalisation, loss settings): runs with equal ones share
  compiled steps (ee_jax/runtime/shared_steps.py). Not the seed, tiles or initial weights."""
  return {"model": run.model_cfg, "num_classes": run.num_classes, "optim": config.optim,
          "finetune": {k: v for k, v in config.finetune.items() if k not in NOT_IN_STEP},
          "steps": int(config.train.steps), "mean": run.mean, "std": run.std,
          "ignore_index": run.ignore_index, "class_weights": run.class_weights}


def finetune(config, workdir: str) -> dict:
  """Fine-tunes (or resumes), then evaluates on config.finetune.test_split (eval.json):
  the last params, or with `finetune.select_best` those of the best validation mIoU."""
  run = prepare_run(config, workdir)

  def compiled_step(head_only: bool):
    return shared_steps.reuse("finetune", dict(step_ingredients(config, run), head_only=head_only),
                            lambda: parallel.pmap_step(finetune_step.make_finetune_step(
                                run.model, run.tx, run.schedule, run.mean, run.std,
                                run.num_classes, run.ignore_index, run.class_weights,
                                config.finetune.dihedral, head_only=head_only),
                                donate_argnums=(0,)))

  head_steps = finetune_step.head_only_steps(config.finetune, int(config.train.steps))
  p_head_step = None
  if head_steps > run.start:
    p_head_step = cached_head_step(config, run, head_steps) or compiled_step(True)
  p_step = compiled_step(False)
  p_eval = evaluate_lib.make_evaluator(run.ckpt_meta, run.num_classes, run.ignore_index)

  best = (finetune_best.BestKeeper(workdir, run.ckpt_meta, config.data.eval_split)
          if config.finetune.select_best else None)

  def validation(p_state):
    scores = evaluate_lib.scores_for(p_eval, p_state.params, config, run.builder,
                                     config.data.eval_split, run.class_names)
    if best is not None:
      host = jax.device_get(parallel.unreplicate(p_state))
      best.offer(int(host.step), scores["miou"], host.params)
    return {"miou": scores["miou"], "oa": scores["oa"]}

  s = run.ckpt_meta["tile_size"]
  last, _ = loop.run(config, workdir, run.builder, run.state, start=run.start, p_step=p_step,
                     step_keys=STEP_KEYS, evaluate=validation, ckpt=run.ckpt,
                     ckpt_meta=run.ckpt_meta, indices=run.indices, pixels_per_tile=s * s,
                     head_steps=head_steps, p_head_step=p_head_step)
  run.ckpt.close()
  source_dir = workdir
  if best is not None:
    best.close()
    if best.step is None:
      raise DataError(f"{workdir}: config.finetune.select_best found no validation mIoU "
                      f"(split '{config.data.eval_split}' has no labelled pixels?)")
    distributed.log(f"Best {config.data.eval_split} mIoU {_fmt(best.miou)} at step "
                    f"{best.step}: its params are evaluated")
    source_dir = finetune_best.best_dir(workdir)
  return {**last, **write_test_result(config, workdir, source_dir)}


def cached_head_step(config, run: Run, head_steps: int):
  """The run's head-alone steps on its tiles' backbone features computed once
  (ee_jax/train/probe_features.py), as `p_head_step(p_state, batch, base_keys)`; None where
  `finetune.probe_feature_cache` says not to cache."""
  ft = config.finetune
  split = config.data.train_split
  num_tiles = (run.builder.info.splits[split].num_examples if run.indices is None
               else len(run.indices))
  views = probe_features.NUM_DIHEDRAL if ft.dihedral else 1
  t, s, c = run.ckpt_meta["num_dates"], run.ckpt_meta["tile_size"], len(run.ckpt_meta["bands"])
  feature = jax.eval_shape(
      lambda p: run.model.backbone.apply({"params": p}, np.zeros((1, t, s, s, c), np.float32),
                                         np.ones((1, t, s, s), np.float32)),
      run.state.params[models.BACKBONE])
  nbytes = probe_features.cache_bytes(num_tiles, views, feature.shape[1:], feature.dtype)
  per_device = parallel.device_batch(config.data.per_device_batch)
  if not probe_features.should_cache(
      ft.get("probe_feature_cache", "auto"), num_tiles=num_tiles, views=views,
      steps=head_steps - run.start, global_batch=per_device * jax.device_count(),
      nbytes=nbytes, processes=jax.process_count()):
    return None
  step = shared_steps.reuse(
      "finetune", dict(step_ingredients(config, run), head_only="cached features"),
      lambda: parallel.pmap_step(probe_features.make_cached_head_step(
          run.model, run.tx, run.schedule, run.num_classes, run.ignore_index,
          run.class_weights, ft.dihedral), donate_argnums=(0,)))
  features = shared_steps.reuse(
      "probe_features", {"model": run.model_cfg, "num_classes": run.num_classes},
      lambda: parallel.pmap_step(probe_features.make_feature_fn(run.model)))
  cache = probe_features.build(features, run.state.params[models.BACKBONE], run.builder,
                               split, run.indices, run.mean, run.std, ft.dihedral, per_device)
  return lambda p_state, batch, base_keys: step(p_state, batch, base_keys, cache)


def write_test_result(config, workdir: str, source_dir: str) -> dict:
  """Evaluates `source_dir`'s params on the test split into <workdir>/eval.json."""
  result = evaluate_lib.evaluate(config, workdir, checkpoint=source_dir)
  distributed.log(f"{config.finetune.test_split}: mIoU {_fmt(result['miou'])}, "
                  f"OA {_fmt(result['oa'])} -> {os.path.join(workdir, 'eval.json')}")
  return {"test_miou": result["miou"], "test_oa": result["oa"]}


def _fmt(x):
  return "n/a" if x is None else f"{100 * x:.2f}"
