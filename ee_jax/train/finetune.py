"""Segmentation fine-tuning, top to bottom: from a pre-training checkpoint or random weights
to the test split's eval.json.

Partial restore: the backbone comes from the pre-training checkpoint, the segmentation head
is new (the projection head is dropped). The backbone's architecture and the input
normalisation come from the checkpoint, so the backbone sees what it was trained on; a band
list or normalisation mismatch with the dataset is an error unless explicitly allowed.
A workdir that already holds fine-tuning checkpoints resumes from the latest one (the
loop, its logs, checkpoints and preemption: ee_jax/train/loop.py, shared with pre-training).

Sections: config checks; initial weights (pretrained or random) and the run's tiles; the
optimiser (LP-FT); the step; head-alone steps on cached backbone features; evaluation; the
best checkpoint (`finetune.select_best`); the run.
"""

import dataclasses
import json
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ee_jax import augment, metrics, models, storage
from ee_jax.errors import ConfigError, DataError
from ee_jax.runtime import distributed, parallel, shared_steps
from ee_jax.runtime.parallel import AXIS
from ee_jax.train import optim
from ee_jax.train.state import TrainState

# The optimiser and the steps need JAX, flax and optax alone: the data and checkpoint
# libraries (tensorflow_datasets, orbax: ee_jax.data, checkpoints, loop, pretrain) are
# imported where a run needs them, so benchmarks/train_step.py times these steps on machines
# without those libraries (benchmarks/gpu_check.sh).
# pylint: disable=import-outside-toplevel


# ----------------------------------------------------------------------------- config checks

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


def check_class_weights(config) -> None:
  """Class weights are given or computed (balance_classes), not both."""
  if config.finetune.get("balance_classes", False) and list(config.finetune.class_weights):
    raise ConfigError("config.finetune.balance_classes computes the class weights; leave "
                      "config.finetune.class_weights empty (or set balance_classes False)")


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


# ------------------------------------------------ initial weights (pretrained or random), tiles

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
  from ee_jax.data import label_fractions
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


# `finetune.balance_classes`: a class's pixels weigh in the loss inversely to its share of
# the run's labelled pixels, so each class counts as it does in the mIoU the runs are scored
# by, and as it does for the classical baselines (which sample at most 10,000 pixels a
# class). Capped, so that a class with a handful of labelled pixels does not dominate.
MAX_BALANCED_WEIGHT = 10.0


def balanced_weights(counts, max_weight: float = MAX_BALANCED_WEIGHT) -> list:
  """Per-class weights from labelled pixel counts [K]: total / (present classes x count),
  at most `max_weight`; 0 for a class without pixels (it never enters the loss)."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  if not present.any():
    return [1.0] * len(counts)
  w = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
  return [float(x) for x in np.minimum(w, max_weight)]


def loss_class_weights(config, builder, indices, num_classes: int, ignore_index: int):
  """The run's per-class loss weights (None = uniform): `finetune.class_weights` as given,
  or with `finetune.balance_classes` from the labelled tiles (`indices`, None = all)."""
  ft = config.finetune
  given = list(ft.class_weights)
  if ft.get("balance_classes", False):
    from ee_jax.data import label_fractions
    hist = label_fractions.class_histograms(builder, config.data.train_split, num_classes,
                                            ignore_index)
    counts = hist.sum(0) if indices is None else hist[np.asarray(indices)].sum(0)
    weights = balanced_weights(counts)
    distributed.log(f"Class weights (balance_classes, {int(counts.sum()):,} labelled px): "
                    f"{[round(w, 2) for w in weights]}")
    return weights
  if given and len(given) != num_classes:
    raise ConfigError(f"config.finetune.class_weights: {len(given)} weights for "
                      f"{num_classes} classes")
  return given or None


@dataclasses.dataclass
class Run:
  """One fine-tuning run set up to train from `start` (prepare_run)."""
  config: Any
  workdir: str
  builder: Any
  model: Any
  model_cfg: Any
  tx: Any
  schedule: Any
  state: TrainState        # host state at `start` (fresh, restored or resumed)
  start: int
  ckpt: Any                # its checkpoints.Checkpointer
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
  from ee_jax import checkpoints
  from ee_jax.data import contract, datasets
  from ee_jax.train.pretrain import dataset_metadata, write_config
  check_selection(config)
  check_class_weights(config)
  storage.makedirs(workdir)
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
    models.take_run_choices(model_cfg, config.model)   # compute and head: this run's own
    norm = src_meta
    backbone = src_params["backbone"]

  model = models.build_segmentation_model(model_cfg, k)
  total = int(config.train.steps)
  tx, schedule = make_optimizer(config.optim, config.finetune, total)
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
  weights = loss_class_weights(config, builder, indices, k, ignore_index)
  mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
  ckpt_meta = {**data_meta, "kind": "finetune", "mean": list(mean), "std": list(std),
               "model": model_cfg.to_dict(), "class_names": class_names, "num_classes": k,
               "ignore_index": ignore_index, "init_checkpoint": source,
               "label_fraction": config.finetune.label_fraction,
               "config": json.loads(config.to_json_best_effort()),
               "code_version": checkpoints.code_version()}
  return Run(config, workdir, builder, model, model_cfg, tx, schedule, state, start, ckpt,
             ckpt_meta, indices, mean, std, weights, class_names, ignore_index)


# ------------------------------------------------------------------------ the optimiser (LP-FT)

def make_optimizer(optim_cfg, finetune_cfg, total_steps: int):
  """(transformation, lr schedule) for fine-tuning.

  Head trained normally; backbone frozen or at `backbone_lr_mult` x the learning rate. With
  `linear_probe_steps` K > 0 (LP-FT, Kumar et al. 2022): the first K steps train the head
  alone at `linear_probe_lr` (optim's warmup + cosine shape over K steps), so a fresh head
  does not send large gradients into a good backbone; the remaining steps then train as
  above with the normal schedule over `total_steps - K` steps and fresh optimizer moments.
  """
  k = int(finetune_cfg.linear_probe_steps)
  if k < 0:
    raise ConfigError(f"config.finetune.linear_probe_steps must be >= 0; got {k}")
  if k == 0:
    return _tuning_optimizer(optim_cfg, finetune_cfg, total_steps)
  if finetune_cfg.freeze_backbone:
    raise ConfigError("config.finetune.linear_probe_steps > 0 trains the backbone after the "
                      "linear probe; it cannot be combined with config.finetune.freeze_backbone")
  if k >= total_steps:
    raise ConfigError(f"config.finetune.linear_probe_steps ({k}) must be below "
                      f"config.train.steps ({total_steps}), or nothing is fine-tuned after it")
  probe_cfg = optim_cfg.copy_and_resolve_references()
  probe_cfg.learning_rate = float(finetune_cfg.linear_probe_lr)
  probe_head, probe_schedule = optim.make_optimizer(probe_cfg, k)
  probe = _by_part(optax.set_to_zero(), probe_head)
  tune, tune_schedule = _tuning_optimizer(optim_cfg, finetune_cfg, total_steps - k)
  return switch_at(k, probe, tune), optax.join_schedules([probe_schedule, tune_schedule], [k])


def head_only_steps(finetune_cfg, total_steps: int) -> int:
  """How many first steps leave the backbone unchanged (make_optimizer): all of them with
  `freeze_backbone`, LP-FT's `linear_probe_steps`, else 0. Those steps can skip the
  backbone's gradient (make_step's `head_only`)."""
  if finetune_cfg.freeze_backbone:
    return int(total_steps)
  return int(finetune_cfg.linear_probe_steps)


def _by_part(backbone_tx, head_tx):
  """`backbone_tx` on params['backbone'], `head_tx` on everything else."""
  labels = lambda params: {k: ("backbone" if k == "backbone" else "head") for k in params}  # noqa: E731
  return optax.multi_transform({"backbone": backbone_tx, "head": head_tx}, labels)


def _tuning_optimizer(optim_cfg, finetune_cfg, total_steps: int):
  head_tx, schedule = optim.make_optimizer(optim_cfg, total_steps)
  if finetune_cfg.freeze_backbone:
    return _by_part(optax.set_to_zero(), head_tx), schedule
  if finetune_cfg.backbone_lr_mult == 1.0:
    return head_tx, schedule
  scaled = optim_cfg.copy_and_resolve_references()
  scaled.learning_rate = optim_cfg.learning_rate * finetune_cfg.backbone_lr_mult
  backbone_tx, _ = optim.make_optimizer(scaled, total_steps)
  return _by_part(backbone_tx, head_tx), schedule


class SwitchState(NamedTuple):
  count: jnp.ndarray  # updates done so far (int32)
  first: Any
  second: Any


def switch_at(k: int, first: optax.GradientTransformation,
              second: optax.GradientTransformation) -> optax.GradientTransformation:
  """`first` for the first k updates, `second` afterwards; both states live in the
  optimizer state (so a checkpoint holds them and a resumed run switches at the same step),
  and `second` starts from its initial state, at its own count 0, at update k."""

  def init(params):
    return SwitchState(jnp.zeros((), jnp.int32), first.init(params), second.init(params))

  def update(updates, state, params=None):
    def use_first(_):
      out, s = first.update(updates, state.first, params)
      return out, s, state.second

    def use_second(_):
      out, s = second.update(updates, state.second, params)
      return out, state.first, s

    out, s1, s2 = jax.lax.cond(state.count < k, use_first, use_second, None)
    return out, SwitchState(state.count + 1, s1, s2)

  return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------------------------ the step
#
# Loss: cross-entropy over labelled pixels (label != ignore_index) that are observed on at
# least one date, optionally class-weighted. The loss is normalised by the labelled-pixel
# count of the whole global batch, so per-device gradients summed over devices equal the
# gradient of the global-batch loss, whatever the split across devices.
#
# The devices meet once a step: each differentiates its own unnormalised sum, and one psum
# carries the gradients, the sums and the counts; the division by the global count comes
# after it. Why: on CPU devices that share the cores (launch.py's split), a device waiting in
# a collective holds a pool thread that the other device's parallel operations need, and
# each extra meeting mid-step cost it milliseconds (docs/perf_log.md: the fine-tuning step
# 0.93x the time with the normaliser's psum moved to the end).

# uint16 [b,T,H,W,C], bool [b,T,H,W] -> normalised float with nodata at 0, date weights.
prepare_inputs = augment.model_input


def dihedral_choice(base_key, step, index):
  """int32 [b]: the flip/rotation (dihedral element 0..7) of each example at `step`."""
  keys = augment.example_keys(base_key, step, index)
  return jax.vmap(lambda key: jax.random.randint(key, (), 0, 8))(keys)


def example_dihedral(x, k):
  """Dihedral element k of one example's x [T, H, W, ...] (on H, W)."""
  return jnp.moveaxis(augment.apply_dihedral(jnp.moveaxis(x, 0, 2), k), 2, 0)


def random_dihedral(batch, base_key, step):
  """The same random flip/rotation of image (if present), valid and label per example
  (square tiles); the batch also gets the elements drawn (`dihedral`)."""
  k = dihedral_choice(base_key, step, batch["index"])
  out = dict(batch, dihedral=k, label=jax.vmap(augment.apply_dihedral)(batch["label"], k))
  for key in ("image", "valid"):
    if key in batch:
      out[key] = jax.vmap(example_dihedral)(batch[key], k)
  return out


def pixel_weights(label, valid, num_classes, ignore_index, class_weights=None):
  """Weight of each pixel in the loss: 0 for ignored or never-observed pixels."""
  counted = (label != ignore_index) & valid.any(axis=1)
  w = counted.astype(jnp.float32)
  if class_weights is not None:
    w = w * jnp.asarray(class_weights, jnp.float32)[jnp.clip(label, 0, num_classes - 1)]
  return w


def make_step(model, tx, schedule, mean, std, num_classes: int, ignore_index: int,
              class_weights=None, dihedral: bool = True, *, head_only: bool = False,
              cached_features: bool = False, axis_name: str = AXIS):
  """Per-device `step(state, batch, base_key) -> (state, metrics)` (wrap with
  parallel.pmap_step): one update on the weighted cross-entropy of the model's logits, its
  batch (image, valid, label, index) flipped and rotated first (with `dihedral`). metrics:
  loss, pixel accuracy on the batch, grad_norm (of the gradients the step applies), lr.

  `head_only`: differentiate the loss with respect to everything but the backbone, whose
  gradient is passed on as zeros. For the steps where `tx` leaves the backbone as it is
  (LP-FT's linear probe, `freeze_backbone`: `head_only_steps`) this is the same update
  without the backward pass through the backbone, most of a step's cost.

  `cached_features` (with `head_only`): `step(state, batch, base_key, cache)` takes each
  example's backbone features from `cache` (build_feature_cache: the example's `index` must
  have a row there) under the dihedral element it draws, instead of running the backbone;
  the batch's image is dropped and `mean`, `std` are unused.
  """
  if cached_features and not head_only:
    raise ValueError("make_step: cached_features trains the head alone (head_only=True)")

  def logits_fn(params, batch, cache):
    if cached_features:
      k = batch["dihedral"] if dihedral else jnp.zeros_like(batch["index"])
      feats = cache["features"][cache["slot"][batch["index"]], k]
      return model.head.apply({"params": params[models.HEAD]}, feats).astype(jnp.float32)
    x, date_valid = prepare_inputs(batch["image"], batch["valid"], mean, std)
    return model.apply({"params": params}, x, date_valid).astype(jnp.float32)

  def loss_fn(params, batch, cache):
    """This device's weighted cross-entropy sum, and the sums the metrics need."""
    logits = logits_fn(params, batch, cache)
    label = batch["label"].astype(jnp.int32)
    w = pixel_weights(label, batch["valid"], num_classes, ignore_index, class_weights)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(label == ignore_index, 0, label))
    counted = w > 0
    sums = dict(weight=w.sum(), counted=counted.sum(dtype=jnp.float32),
                correct=((logits.argmax(-1) == label) & counted).sum(dtype=jnp.float32))
    return (ce * w).sum(), sums

  def local_grads(params, batch, cache):
    """((loss sum, sums), gradients of the loss sum): this device's, not yet normalised."""
    if not head_only:
      return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, cache)
    backbone = params[models.BACKBONE]
    rest = {k: v for k, v in params.items() if k != models.BACKBONE}
    return jax.value_and_grad(
        lambda r: loss_fn({**r, models.BACKBONE: backbone}, batch, cache),
        has_aux=True)(rest)

  def step_fn(state: TrainState, batch, base_key, cache=None):
    if cached_features:
      batch = {k: v for k, v in batch.items() if k != "image"}
    if dihedral:
      batch = random_dihedral(batch, base_key, state.step)
    (loss_sum, sums), grads = local_grads(state.params, batch, cache)
    loss_sum, sums, grads = jax.lax.psum((loss_sum, sums, grads), axis_name)  # the one meeting
    total_w = jnp.maximum(sums["weight"], 1e-6)
    grads = jax.tree.map(lambda g: g / total_w, grads)
    if head_only:
      grads = {**grads, models.BACKBONE: jax.tree.map(jnp.zeros_like,
                                                      state.params[models.BACKBONE])}
    out = {
        "loss": loss_sum / total_w,
        "pixel_acc": sums["correct"] / jnp.maximum(sums["counted"], 1),
        "grad_norm": optax.global_norm(grads),
        "lr": schedule(state.step),
    }
    return state.apply_gradients(grads, tx), out

  return step_fn


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


def compiled_step(config, run: Run, head_only: bool = False, cached_features: bool = False):
  """The run's pmapped make_step, shared with earlier runs of this process built from the
  same ingredients."""
  variant = "cached features" if cached_features else head_only
  return shared_steps.reuse(
      "finetune", dict(step_ingredients(config, run), head_only=variant),
      lambda: parallel.pmap_step(make_step(
          run.model, run.tx, run.schedule, run.mean, run.std, run.num_classes,
          run.ignore_index, run.class_weights, config.finetune.dihedral,
          head_only=head_only, cached_features=cached_features), donate_argnums=(0,)))


# --------------------------------------------------- head-alone steps on cached backbone features
#
# The steps that train the head alone (LP-FT's linear probe, `freeze_backbone`) leave the
# backbone as it is, so a tile under a given flip/rotation always gives it the same features:
# computing them for every (tile, dihedral element) once costs `tiles x 8` backbone passes,
# where the steps cost one per example they draw. With few labelled tiles (a study's 1/16 or
# 1/64 of the labels) that is a small share: 100 probe steps of 16 tiles draw 1,600 examples
# from 8 x 8 = 64 distinct inputs at 1/64. The cached step (make_step's `cached_features`)
# takes the same batches, draws the same dihedral element per example (`dihedral_choice`) and
# gathers those features instead of running the backbone: the same update up to the rounding
# of the backbone's batched arithmetic (tests/test_finetune_step.py).
#
# `finetune.probe_feature_cache`: 'auto' (when the steps would run the backbone on
# PASSES_SAVED times more examples than the cache computes, and its copy per device fits in
# MAX_CACHE_BYTES; one process only), 'always' (fits only), 'never'.

FEATURE_CACHE_CHOICES = ("auto", "always", "never")
MAX_CACHE_BYTES = 1 << 30  # per device: every device holds the whole cache
# 'auto' caches when the probe steps would run the backbone on at least this many times
# more examples than the cache computes. Measured on the default study (2 CPU cores,
# docs/perf_log.md): 100 steps of 16 examples from 32 or 8 tiles x 8 flips (6x, 25x) ran
# 1.3-1.9 s a run faster cached; from 128 tiles (1.6x) 1.8 s slower (the cache's own
# passes, its memory and a compile for its shape cost more than the 576 passes saved).
PASSES_SAVED = 4
NUM_DIHEDRAL = 8


def feature_cache_bytes(num_tiles: int, views: int, feature_shape, dtype) -> int:
  """Bytes of the features of `num_tiles` tiles x `views`, one example's [H, W, F] each."""
  return num_tiles * views * math.prod(feature_shape) * np.dtype(dtype).itemsize


def should_cache_features(choice: str, *, num_tiles: int, views: int, steps: int,
                          global_batch: int, nbytes: int, processes: int = 1) -> bool:
  """Whether the head-alone steps take cached features (the section's comment)."""
  if choice not in FEATURE_CACHE_CHOICES:
    raise ConfigError(f"config.finetune.probe_feature_cache: '{choice}' is not one of "
                      f"{list(FEATURE_CACHE_CHOICES)}")
  if choice == "never" or steps <= 0 or processes != 1 or nbytes > MAX_CACHE_BYTES:
    return False
  return choice == "always" or num_tiles * views * PASSES_SAVED <= steps * global_batch


def make_features_fn(model):
  """Per-device `fn(backbone_params, image, valid, k, mean, std) -> features [b, H, W, F]`
  of each example under its dihedral element k [b] (the normalisation as arguments, so runs
  that differ in it share the program)."""
  def fn(backbone, image, valid, k, mean, std):
    image = jax.vmap(example_dihedral)(image, k)
    valid = jax.vmap(example_dihedral)(valid, k)
    x, date_valid = prepare_inputs(image, valid, mean, std)
    return head_features(model, backbone, x, date_valid)
  return fn


def head_features(model, backbone, x, date_valid):
  """What `model`'s head classifies (SegmentationModel.head_features), from the backbone's
  params alone."""
  return model.apply({"params": {models.BACKBONE: backbone}}, x, date_valid,
                     method=model.head_features)


def compute_features(p_features_fn, backbone, images, valid, mean, std, views: int,
                     per_device: int):
  """features [n, views, H, W, F] on host of tiles images [n, T, H, W, C], valid
  [n, T, H, W], under dihedral elements 0..views-1, by `p_features_fn` (make_features_fn's,
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
    out = np.asarray(p_features_fn(p_args[0], batch["image"], batch["valid"], batch["k"],
                                   p_args[1], p_args[2]))
    out = out.reshape((chunk,) + out.shape[2:])
    if feats is None:   # filled in place: the host holds the features once
      feats = np.empty((total,) + out.shape[1:], out.dtype)
    feats[sel] = out
  return feats[:n * views].reshape((n, views) + feats.shape[1:])


def build_feature_cache(p_features_fn, backbone, builder, split: str, indices, mean, std,
                        dihedral: bool, per_device: int) -> dict:
  """The cache of a run's tiles (`indices` of `split`; None = all), laid out for the cached
  step and replicated on the local devices: features [n, views, H, W, F] and `slot`
  [split size] (a tile's row, -1 for tiles not trained on)."""
  from ee_jax.data import contract, pipeline
  size = builder.info.splits[split].num_examples
  rows = np.arange(size) if indices is None else np.asarray(indices, np.int64)
  tiles = pipeline.read_examples(builder, split, rows, (contract.IMAGE, contract.VALID))
  views = NUM_DIHEDRAL if dihedral else 1
  feats = compute_features(p_features_fn, backbone, tiles[contract.IMAGE],
                           tiles[contract.VALID], mean, std, views, per_device)
  slot = np.full(size, -1, np.int32)
  slot[rows] = np.arange(rows.size, dtype=np.int32)
  distributed.log(f"Cached backbone features: {rows.size} tiles x {views} flips/rotations "
                  f"({feats.nbytes / 2**20:.0f} MiB a device) for the head-alone steps")
  return parallel.replicate({"features": feats, "slot": slot})


def cached_features_step(config, run: Run, head_steps: int):
  """The run's head-alone steps on its tiles' backbone features computed once, as
  `p_head_step(p_state, batch, base_keys)`; None where `finetune.probe_feature_cache` says
  not to cache."""
  ft = config.finetune
  split = config.data.train_split
  num_tiles = (run.builder.info.splits[split].num_examples if run.indices is None
               else len(run.indices))
  views = NUM_DIHEDRAL if ft.dihedral else 1
  t, s, c = run.ckpt_meta["num_dates"], run.ckpt_meta["tile_size"], len(run.ckpt_meta["bands"])
  feature = jax.eval_shape(
      lambda p: head_features(run.model, p, np.zeros((1, t, s, s, c), np.float32),
                              np.ones((1, t, s, s), np.float32)),
      run.state.params[models.BACKBONE])
  nbytes = feature_cache_bytes(num_tiles, views, feature.shape[1:], feature.dtype)
  per_device = parallel.device_batch(config.data.per_device_batch)
  if not should_cache_features(
      ft.get("probe_feature_cache", "auto"), num_tiles=num_tiles, views=views,
      steps=head_steps - run.start, global_batch=per_device * jax.device_count(),
      nbytes=nbytes, processes=jax.process_count()):
    return None
  step = compiled_step(config, run, head_only=True, cached_features=True)
  features = shared_steps.reuse(
      "cached_features", {"model": run.model_cfg, "num_classes": run.num_classes},
      lambda: parallel.pmap_step(make_features_fn(run.model)))
  cache = build_feature_cache(features, run.state.params[models.BACKBONE], run.builder,
                              split, run.indices, run.mean, run.std, ft.dihedral, per_device)
  return lambda p_state, batch, base_keys: step(p_state, batch, base_keys, cache)


# ---------------------------------------------------------------------------------- evaluation
#
# Every example of the split counts exactly once on any number of devices and processes:
# the eval iterator pads the last global batch and marks padding with `mask`, and the
# per-device confusion matrices are summed across devices inside the step.

def make_eval_step(model, mean, std, num_classes: int, ignore_index: int,
                   axis_name: str = AXIS):
  """Per-device `eval_step(params, batch) -> confusion matrix [K, K]` summed over devices.

  Padding examples (batch['mask'] False) and pixels never observed count nowhere.
  """
  def eval_fn(params, batch):
    x, date_valid = prepare_inputs(batch["image"], batch["valid"], mean, std)
    pred = model.apply({"params": params}, x, date_valid).argmax(-1)
    seen = batch["valid"].any(axis=1) & batch["mask"][:, None, None]
    cm = metrics.confusion_matrix(pred, batch["label"], seen, num_classes, ignore_index)
    return jax.lax.psum(cm, axis_name)

  return eval_fn


def make_evaluator(meta: dict, num_classes: int, ignore_index: int):
  """A pmapped eval step for the model and normalisation stored in `meta` (a fine-tuning
  checkpoint's metadata); the one built earlier in this process for equal ones, if any."""
  def build():
    model = models.build_segmentation_model(ml_collections.ConfigDict(meta["model"]),
                                           num_classes)
    mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
    return parallel.pmap_step(make_eval_step(model, mean, std, num_classes, ignore_index))

  return shared_steps.reuse("segmentation_eval", {
      "model": meta["model"], "mean": meta["mean"], "std": meta["std"],
      "num_classes": num_classes, "ignore_index": ignore_index}, build)


def confusion_over_split(p_eval, p_params, config, builder, split: str,
                         **pipeline_overrides) -> np.ndarray:
  """Sum of the (device-summed) confusion matrices over every batch of `split`."""
  from ee_jax.data import contract, pipeline
  keys = (contract.IMAGE, contract.VALID, contract.LABEL)
  total = None
  with pipeline.eval_iterator_from_config(config, builder, split=split, keys=keys,
                                          **pipeline_overrides) as it:
    for batch in it:
      cm = p_eval(p_params, {k: batch[k] for k in (*keys, "mask")})
      cm = np.asarray(jax.device_get(parallel.unreplicate(cm)), np.int64)
      total = cm if total is None else total + cm
  return total


def scores_for(p_eval, p_params, config, builder, split, class_names) -> dict:
  cm = confusion_over_split(p_eval, p_params, config, builder, split)
  return metrics.segmentation_scores(cm, class_names)


def evaluate(config, workdir: str, split: str | None = None,
             filename: str = "eval.json", checkpoint: str | None = None) -> dict:
  """Evaluates the latest checkpoint in `workdir` (or in `checkpoint`, e.g. the run's
  best-on-validation params) on `split` (default config.finetune.test_split); writes and
  returns <workdir>/<filename> (`--mode=evaluate`)."""
  from ee_jax import checkpoints
  from ee_jax.data import datasets
  checkpoint = checkpoint or workdir
  params, meta = checkpoints.load_params(checkpoint)
  if meta.get("kind") != "finetune":
    raise DataError(f"{checkpoint}: holds a '{meta.get('kind')}' checkpoint; evaluation needs a "
                    f"fine-tuned segmentation model (--mode=finetune)")
  builder = distributed.primary_first(
      lambda: datasets.prepare(config.data, log=lambda *a: None), "prepare")
  checkpoints.check_bands(meta, builder.info.metadata, checkpoint, os.fspath(builder.data_dir))
  split = split or config.finetune.test_split
  class_names = list(meta["class_names"])
  p_eval = make_evaluator(meta, len(class_names), meta["ignore_index"])
  result = scores_for(p_eval, parallel.replicate(params), config, builder, split, class_names)
  result.update(split=split, checkpoint_step=checkpoints.resolve_checkpoint(checkpoint)[1],
                num_examples=builder.info.splits[split].num_examples)
  if checkpoint != workdir:
    result["checkpoint"] = checkpoint
  if "best_step" in meta:  # params chosen on validation (BestKeeper)
    result["selected_on"] = {"split": meta["best_split"], "step": meta["best_step"],
                             "miou": meta["best_miou"]}
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, filename),  # never a half-written result
                       json.dumps(result, indent=2))
  distributed.barrier(f"ee_jax:{filename}")  # all processes may read it once we return
  return result


# ------------------------------------------------------------------------- the best checkpoint
#
# With scarce labels a fine-tuning overfits within a few hundred steps, so the last step is
# not the one to report (`finetune.select_best`). Every validation pass offers its params;
# the best mIoU so far is kept as its own orbax checkpoint under <workdir>/best (one step,
# replaced only once the better one is complete), with its step and mIoU in the checkpoint's
# metadata and in <workdir>/best/best.json. A resumed run reads the best so far back from
# there.

BEST = "best"


def best_dir(workdir: str) -> str:
  return os.path.join(workdir, BEST)


def params_source(workdir: str) -> str:
  """Where a run's reported params are: its best-on-validation ones if kept, else its own."""
  directory = best_dir(workdir)
  return directory if storage.isdir(os.path.join(directory, "checkpoints")) else workdir


class BestKeeper:
  """Keeps the params with the highest validation mIoU (the first among equals)."""

  def __init__(self, workdir: str, meta: dict, split: str):
    from ee_jax import checkpoints
    self.directory = best_dir(workdir)
    self._meta, self._split = meta, split
    self._ckpt = checkpoints.Checkpointer(self.directory, max_to_keep=1)
    self.step, self.miou = None, None
    if self._ckpt.latest_step() is not None:
      kept = self._ckpt.metadata()
      self.step, self.miou = int(kept["best_step"]), float(kept["best_miou"])

  def offer(self, step: int, miou, params) -> bool:
    """Keeps host `params` of `step` if `miou` beats the best so far; True if kept.
    Every process calls it (an orbax save is collective)."""
    if miou is None or (self.miou is not None and miou <= self.miou):
      return False
    record = {"best_step": int(step), "best_miou": float(miou), "best_split": self._split}
    self._ckpt.save(step, {"params": params}, {**self._meta, **record}, wait=True)
    self.step, self.miou = int(step), float(miou)
    if jax.process_index() == 0:
      storage.write_text(os.path.join(self.directory, "best.json"), json.dumps(
          {"step": self.step, "miou": self.miou, "split": self._split}, indent=2))
    return True

  def close(self) -> None:
    self._ckpt.close()


# ------------------------------------------------------------------------------------- the run

def finetune(config, workdir: str) -> dict:
  """Fine-tunes (or resumes), then evaluates on config.finetune.test_split (eval.json):
  the last params, or with `finetune.select_best` those of the best validation mIoU."""
  from ee_jax.data import contract
  from ee_jax.train import loop
  run = prepare_run(config, workdir)
  head_steps = head_only_steps(config.finetune, int(config.train.steps))
  p_head_step = None
  if head_steps > run.start:
    p_head_step = (cached_features_step(config, run, head_steps)
                   or compiled_step(config, run, head_only=True))
  p_step = compiled_step(config, run)
  p_eval = make_evaluator(run.ckpt_meta, run.num_classes, run.ignore_index)

  best = (BestKeeper(workdir, run.ckpt_meta, config.data.eval_split)
          if config.finetune.select_best else None)

  def validation(p_state):
    scores = scores_for(p_eval, p_state.params, config, run.builder, config.data.eval_split,
                        run.class_names)
    if best is not None:
      host = jax.device_get(parallel.unreplicate(p_state))
      best.offer(int(host.step), scores["miou"], host.params)
    return {"miou": scores["miou"], "oa": scores["oa"]}

  s = run.ckpt_meta["tile_size"]
  last, _ = loop.run(config, workdir, run.builder, run.state, start=run.start, p_step=p_step,
                     step_keys=(contract.IMAGE, contract.VALID, contract.LABEL),
                     evaluate=validation, ckpt=run.ckpt,
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
    source_dir = best_dir(workdir)
  return {**last, **write_test_result(config, workdir, source_dir)}


def write_test_result(config, workdir: str, source_dir: str) -> dict:
  """Evaluates `source_dir`'s params on the test split into <workdir>/eval.json."""
  result = evaluate(config, workdir, checkpoint=source_dir)
  distributed.log(f"{config.finetune.test_split}: mIoU {_fmt(result['miou'])}, "
                  f"OA {_fmt(result['oa'])}, kappa x100 {_fmt(result['kappa'])} -> "
                  f"{os.path.join(workdir, 'eval.json')}")
  return {"test_miou": result["miou"], "test_oa": result["oa"]}


def _fmt(x):
  return "n/a" if x is None else f"{100 * x:.2f}"
