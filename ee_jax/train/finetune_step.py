"""Per-device fine-tuning and evaluation steps for segmentation (wrap with parallel.pmap_step).

Loss: cross-entropy over labelled pixels (label != ignore_index) that are observed on at
least one date, optionally class-weighted. The loss is normalised by the labelled-pixel
count of the whole global batch, so per-device gradients summed over devices equal the
gradient of the global-batch loss, whatever the split across devices.

The devices meet once a step: each differentiates its own unnormalised sum, and one psum
carries the gradients, the sums and the counts; the division by the global count comes
after it. Why: on CPU devices that share the cores (launch.py's split), a device waiting in
a collective holds a pool thread that the other device's parallel operations need, and
each extra meeting mid-step cost it milliseconds (docs/scaling.md: the fine-tuning step
0.93x the time with the normaliser's psum moved to the end).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ee_jax import augment, metrics, models
from ee_jax.errors import ConfigError
from ee_jax.runtime.parallel import AXIS
from ee_jax.train import optim
from ee_jax.train.state import TrainState


def prepare_inputs(image, valid, mean, std):
  """uint16 [b,T,H,W,C], bool [b,T,H,W] -> normalised float with nodata at 0, date weights."""
  x = augment.normalize(image, mean, std)
  x = jnp.where(valid[..., None], x, 0.0)
  return x, valid.astype(jnp.float32)


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


def make_finetune_step(model, tx, schedule, mean, std, num_classes: int, ignore_index: int,
                       class_weights=None, dihedral: bool = True, axis_name: str = AXIS,
                       head_only: bool = False):
  """Per-device `step(state, batch, base_key) -> (state, metrics)`; batch holds image,
  valid, label, index. metrics: loss, pixel accuracy on the batch, grad_norm (of the
  gradients the step applies), lr. `head_only`: see make_normalising_step."""
  step = make_normalising_step(model, tx, schedule, num_classes, ignore_index, class_weights,
                               dihedral, axis_name, head_only)
  return lambda state, batch, base_key: step(state, batch, base_key, mean, std)


def make_normalising_step(model, tx, schedule, num_classes: int, ignore_index: int,
                          class_weights=None, dihedral: bool = True, axis_name: str = AXIS,
                          head_only: bool = False):
  """`step(state, batch, base_key, mean, std)`: make_finetune_step's step with the
  per-band normalisation as arguments, for runs that differ in it but train as one
  program (the pretrained arm of a study normalises as its checkpoint did).

  `head_only`: differentiate the loss with respect to everything but the backbone, whose
  gradient is passed on as zeros. For the steps where `tx` leaves the backbone as it is
  (LP-FT's linear probe, `freeze_backbone`: `head_only_steps`) this is the same update
  without the backward pass through the backbone, most of a step's cost.
  """
  def logits_fn(params, batch, mean, std):
    x, date_valid = prepare_inputs(batch["image"], batch["valid"], mean, std)
    return model.apply({"params": params}, x, date_valid).astype(jnp.float32)

  return make_step(logits_fn, tx, schedule, num_classes, ignore_index, class_weights,
                   dihedral, axis_name, head_only)


def make_step(logits_fn, tx, schedule, num_classes: int, ignore_index: int,
              class_weights=None, dihedral: bool = True, axis_name: str = AXIS,
              head_only: bool = False, needs_image: bool = True):
  """`step(state, batch, base_key, *args)`: one update on the weighted cross-entropy of
  `logits_fn(params, batch, *args)` (float32 [b, H, W, classes]), its batch flipped and
  rotated first (with `dihedral`). `head_only`: as in make_normalising_step.
  `needs_image` False: logits_fn does not read the batch's image (it is dropped)."""

  def loss_fn(params, batch, args):
    """This device's weighted cross-entropy sum, and the sums the metrics need."""
    logits = logits_fn(params, batch, *args)
    label = batch["label"].astype(jnp.int32)
    w = pixel_weights(label, batch["valid"], num_classes, ignore_index, class_weights)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(label == ignore_index, 0, label))
    counted = w > 0
    sums = dict(weight=w.sum(), counted=counted.sum(dtype=jnp.float32),
                correct=((logits.argmax(-1) == label) & counted).sum(dtype=jnp.float32))
    return (ce * w).sum(), sums

  def local_grads(params, batch, args):
    """((loss sum, sums), gradients of the loss sum): this device's, not yet normalised."""
    if not head_only:
      return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, args)
    backbone = params[models.BACKBONE]
    rest = {k: v for k, v in params.items() if k != models.BACKBONE}
    return jax.value_and_grad(
        lambda r: loss_fn({**r, models.BACKBONE: backbone}, batch, args),
        has_aux=True)(rest)

  def step_fn(state: TrainState, batch, base_key, *args):
    if not needs_image:
      batch = {k: v for k, v in batch.items() if k != "image"}
    if dihedral:
      batch = random_dihedral(batch, base_key, state.step)
    (loss_sum, sums), grads = local_grads(state.params, batch, args)
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


def head_only_steps(finetune_cfg, total_steps: int) -> int:
  """How many first steps leave the backbone unchanged (make_optimizer): all of them with
  `freeze_backbone`, LP-FT's `linear_probe_steps`, else 0. Those steps can skip the
  backbone's gradient (make_normalising_step's `head_only`)."""
  if finetune_cfg.freeze_backbone:
    return int(total_steps)
  return int(finetune_cfg.linear_probe_steps)


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
