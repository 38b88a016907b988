"""The per-device pre-training and eval steps (wrap them with `parallel.pmap_step`).

One step: normalise + two views on device (parts of each hidden for the masked
objective) -> one forward pass over both views -> the reconstruction error, and for the
pair objectives each view's dihedral undone on the maps, matched pixel pairs, InfoNCE /
VICReg / prototypes with keys all_gathered over the axis -> their weighted sum
(`config.loss.weights`, ee_jax/objectives) -> pmean'd gradients -> optax update. Randomness comes from
(base_key, state.step, global example index) only, so the result does not depend on the
number of devices.

Batch (per device): image uint16 [b, T, H, W, C], valid bool [b, T, H, W], index int [b]
(global example indices).
"""

import jax
import jax.numpy as jnp
import optax

from ee_jax import augment, losses, models, objectives
from ee_jax.objectives import latent, masked, prototypes, vicreg
from ee_jax.runtime.parallel import AXIS
from ee_jax.train.state import TrainState

ANCHOR_SALT = 0x616E63  # separates the anchor-sampling key stream from the augmentation's
MASK_SALT = 0x6D736B    # ... and the masked objective's hiding


def _objectives(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
                axis_name, teacher=None):
  """The weighted sum of the active objectives on one batch; returns (loss, metrics).

  One forward pass over both views serves every objective. The masked objective hides
  parts of each view's input first (so the pair objectives see the hidden views too, one
  more augmentation); the pair objectives compare the views on the same ground pixels; the
  latent objective's teacher (`teacher`: backbone params) sees the views before hiding."""
  active = objectives.active(loss_cfg)
  v1, v2, _ = augment.make_views(base_key, step, batch["index"], batch["image"],
                                 batch["valid"], mean, std, aug_cfg)
  keys = augment.example_keys(base_key, step, batch["index"])
  hidden = None
  whole = (v1, v2)   # the views before hiding: the latent objective's teacher sees these
  if any(name in active for name in objectives.HIDING_OBJECTIVES):
    mask_keys = jax.vmap(lambda k: jax.random.fold_in(k, MASK_SALT))(keys)
    v1, h1 = masked.hide(jax.vmap(lambda k: jax.random.fold_in(k, 1))(mask_keys), v1,
                         loss_cfg.masked)
    v2, h2 = masked.hide(jax.vmap(lambda k: jax.random.fold_in(k, 2))(mask_keys), v2,
                         loss_cfg.masked)
    hidden = jnp.concatenate([h1, h2], axis=0)
  b = v1["image"].shape[0]
  both = lambda k: jnp.concatenate([v1[k], v2[k]], axis=0)   # noqa: E731
  out = model.apply({"params": params}, both("image"), both("date_valid"), all_outputs=True)

  terms, metrics = {}, {}
  if "latent" in active:
    target = model.backbone.apply(
        {"params": jax.lax.stop_gradient(teacher)},
        jnp.concatenate([whole[0]["image"], whole[1]["image"]], axis=0),
        jnp.concatenate([whole[0]["date_valid"], whole[1]["date_valid"]], axis=0))
    terms["latent"], m = latent.latent_loss(out["latent"], target, both("observed"),
                                            loss_cfg.latent, axis_name)
    metrics.update(m)
  if "masked" in active:
    terms["masked"], m = masked.reconstruction_loss(
        out["recon"], both("clean"), both("observed"), both("date_valid"), hidden,
        loss_cfg.masked, axis_name)
    metrics.update(m)
  if any(name in active for name in objectives.PAIR_OBJECTIVES):
    needs = {"infonce": "z", "vicreg": "proj", "prototypes": "scores"}  # the maps each compares
    maps = {needs[name]: out[needs[name]] for name in objectives.PAIR_OBJECTIVES
            if name in active}
    k = both("dihedral")
    maps = {name: augment.undo_dihedral_batch(x, k) for name, x in maps.items()}
    valid = augment.undo_dihedral_batch(both("valid"), k)
    first = {name: x[:b] for name, x in maps.items()}
    second = {name: x[b:] for name, x in maps.items()}
    valid1, valid2 = valid[:b], valid[b:]
    if aug_cfg.crop_shift > 0:  # the views' crops differ: compare the ground pixels both hold
      shift = v1["crop_offset"] - v2["crop_offset"]
      second = {name: augment.align_views(x, valid2, shift)[0] for name, x in second.items()}
      valid2 = augment.align_views(valid2[..., None], valid2, shift)[1]
    anchor_keys = jax.vmap(lambda key: jax.random.fold_in(key, ANCHOR_SALT))(keys)
    idx, idx2, amask = losses.sample_pairs(
        anchor_keys, valid1, valid2, num_anchors=loss_cfg.num_anchors,
        positive_jitter=loss_cfg.get("positive_jitter", 0),
        positive_not_self=loss_cfg.get("positive_not_self", False))
    pair = lambda name: (losses.take_pixels(first[name], idx).astype(jnp.float32),    # noqa: E731
                         losses.take_pixels(second[name], idx2).astype(jnp.float32))
    if "infonce" in active:
      terms["infonce"], m = losses.info_nce_pairs(
          *pair("z"), amask, idx, valid1.shape[2], temperature=loss_cfg.temperature,
          exclude_radius=loss_cfg.exclude_radius, axis_name=axis_name)
      m["infonce"] = m.pop("loss")
      metrics.update(m)
    if "vicreg" in active:
      terms["vicreg"], m = vicreg.vicreg_loss(*pair("proj"), amask, loss_cfg.vicreg, axis_name)
      metrics.update(m)
    if "prototypes" in active:
      terms["prototypes"], m = prototypes.prototype_loss(*pair("scores"), amask,
                                                         loss_cfg.prototypes, axis_name)
      metrics.update(m)
  loss = sum(active[name] * terms[name] for name in terms)
  # Each term is this device's share, its pmean the global value: so is the logged total.
  metrics["loss"] = jax.lax.stop_gradient(
      loss if axis_name is None else jax.lax.pmean(loss, axis_name))
  return loss, metrics


def make_pretrain_step(model, tx, schedule, mean, std, aug_cfg: augment.AugmentConfig,
                       loss_cfg, axis_name: str = AXIS):
  """Per-device `step(state, batch, base_key) -> (state, metrics)`.

  metrics (pmean'd): loss (the weighted total), each objective's own (infonce, pos_cos,
  neg_cos, top1, anchors; masked; vicreg_*; proto*; latent*), grad_norm, lr (of this step).
  With the latent objective the step also moves the EMA teacher (state.teacher).
  """
  def loss_fn(params, batch, base_key, step, teacher):
    return _objectives(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
                       axis_name, teacher)

  def step_fn(state: TrainState, batch, base_key):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, base_key, state.step, state.teacher)
    grads = jax.lax.pmean(grads, axis_name)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    new = state.apply_gradients(grads, tx)
    if state.teacher is not None:
      new = new.replace(teacher=latent.update_teacher(
          state.teacher, new.params[models.BACKBONE], loss_cfg.latent.ema))
    return new, jax.lax.pmean(metrics, axis_name)

  return step_fn


def make_eval_step(model, mean, std, aug_cfg: augment.AugmentConfig, loss_cfg,
                   axis_name: str = AXIS):
  """Per-device `eval_step(state, batch, base_key) -> metrics`: the same contrastive metrics
  without an update; views and anchors use step 0, so every evaluation sees the same ones."""
  def eval_fn(state: TrainState, batch, base_key):
    _, metrics = _objectives(model, state.params, batch, base_key, 0, mean, std, aug_cfg,
                             loss_cfg, axis_name, state.teacher)
    return jax.lax.pmean(metrics, axis_name)

  return eval_fn


def init_state(model, tx, key, aug_cfg: augment.AugmentConfig, tile_shape) -> TrainState:
  """A fresh TrainState for tiles shaped (T, H, W, C) (the views' shape fixes the model's);
  with the latent objective's predictor, a teacher starting as a copy of the backbone."""
  t, s, _, c = augment.view_shape(aug_cfg, tile_shape)
  params = models.init_params(model, key, (1, t, s, s, c), with_valid=True)
  teacher = None
  if getattr(model, "latent_hidden", -1) >= 0:
    teacher = jax.tree_util.tree_map(jnp.array, params[models.BACKBONE])
  return TrainState.create(params, tx, teacher=teacher)
