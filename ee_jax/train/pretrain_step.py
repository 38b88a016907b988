"""The per-device pre-training and eval steps (wrap them with `parallel.pmap_step`).

One step: normalise + two views on device -> one forward pass over both views -> undo each
view's dihedral on the embeddings and valid masks -> dense InfoNCE with keys all_gathered
over the axis -> pmean'd gradients -> optax update. Randomness comes from
(base_key, state.step, global example index) only, so the result does not depend on the
number of devices.

Batch (per device): image uint16 [b, T, H, W, C], valid bool [b, T, H, W], index int [b]
(global example indices).
"""

import jax
import jax.numpy as jnp
import optax

from ee_jax import augment, losses, models
from ee_jax.parallel import AXIS
from ee_jax.train.state import TrainState

ANCHOR_SALT = 0x616E63  # separates the anchor-sampling key stream from the augmentation's


def _contrastive(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
                 axis_name):
  v1, v2, _ = augment.make_views(base_key, step, batch["index"], batch["image"],
                                 batch["valid"], mean, std, aug_cfg)
  b = v1["image"].shape[0]
  both = lambda k: jnp.concatenate([v1[k], v2[k]], axis=0)   # noqa: E731
  z = model.apply({"params": params}, both("image"), both("date_valid"))
  k = both("dihedral")
  z = augment.undo_dihedral_batch(z, k)
  valid = augment.undo_dihedral_batch(both("valid"), k)
  z1, z2, valid1, valid2 = z[:b], z[b:], valid[:b], valid[b:]
  if aug_cfg.crop_shift > 0:  # the views' crops differ: compare the ground pixels both hold
    z2, valid2 = augment.align_views(z2, valid2, v1["crop_offset"] - v2["crop_offset"])
  anchor_keys = jax.vmap(lambda key: jax.random.fold_in(key, ANCHOR_SALT))(
      augment.example_keys(base_key, step, batch["index"]))
  return losses.dense_info_nce(
      z1, z2, valid1, valid2, anchor_keys, num_anchors=loss_cfg.num_anchors,
      temperature=loss_cfg.temperature, exclude_radius=loss_cfg.exclude_radius,
      positive_jitter=loss_cfg.get("positive_jitter", 0),
      positive_not_self=loss_cfg.get("positive_not_self", False), axis_name=axis_name)


def make_pretrain_step(model, tx, schedule, mean, std, aug_cfg: augment.AugmentConfig,
                       loss_cfg, axis_name: str = AXIS):
  """Per-device `step(state, batch, base_key) -> (state, metrics)`.

  metrics (pmean'd): loss, pos_cos, neg_cos, top1, anchors, grad_norm, lr (of this step).
  """
  def loss_fn(params, batch, base_key, step):
    return _contrastive(model, params, batch, base_key, step, mean, std, aug_cfg, loss_cfg,
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
  """Per-device `eval_step(state, batch, base_key) -> metrics`: the same contrastive metrics
  without an update; views and anchors use step 0, so every evaluation sees the same ones."""
  def eval_fn(state: TrainState, batch, base_key):
    _, metrics = _contrastive(model, state.params, batch, base_key, 0, mean, std, aug_cfg,
                              loss_cfg, axis_name)
    return jax.lax.pmean(metrics, axis_name)

  return eval_fn


def init_state(model, tx, key, aug_cfg: augment.AugmentConfig, tile_shape) -> TrainState:
  """A fresh TrainState for tiles shaped (T, H, W, C) (the views' shape fixes the model's)."""
  t, s, _, c = augment.view_shape(aug_cfg, tile_shape)
  return TrainState.create(models.init_params(model, key, (1, t, s, s, c), with_valid=True), tx)
