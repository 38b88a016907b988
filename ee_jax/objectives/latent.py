"""Masked latent prediction (the `latent` objective; data2vec / I-JEPA style).

A teacher, an exponential moving average of the backbone (`ema`), sees each view before
hiding; the student sees the view with the masks of `config.loss.masked` applied, and a
small predictor head maps its features to the teacher's at every pixel the tile observed.

Targets are normalised per example and channel over the observed pixels (instance norm):
every channel of the target then weighs the same in the error, and a constant map has no
unit-variance version, so the trivial solution is no target. The contrast with `masked`:
reconstructing the input spends the error on the input's large-variance directions
(brightness, haze, per-field vigour); the teacher's features are what the backbone itself
found worth keeping, each at unit weight.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ee_jax.errors import ConfigError
from ee_jax.losses import collectives


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.ema = 0.996     # teacher = ema * teacher + (1 - ema) * student backbone, every step
  c.hidden = 0      # predictor head: 0 = linear 1x1 conv, > 0 = hidden width
  c.eps = 1e-4      # variance floor of the target normalisation
  return c


def check_config(cfg) -> None:
  if not 0.0 <= float(cfg.ema) < 1.0:
    raise ConfigError(f"config.loss.latent.ema must be in [0, 1); got {cfg.ema}")


def update_teacher(teacher, backbone_params, ema: float):
  """The teacher after one step: ema * teacher + (1 - ema) * the student's backbone."""
  return optax.incremental_update(backbone_params, teacher, step_size=1.0 - ema)


def normalise_targets(features, weight, eps: float):
  """features [B, H, W, D] -> per example and channel zero mean, unit variance over the
  pixels with weight [B, H, W] > 0 (float32)."""
  f = features.astype(jnp.float32)
  w = weight.astype(jnp.float32)[..., None]
  n = jnp.maximum(jnp.sum(w, axis=(1, 2), keepdims=True), 1.0)
  mean = jnp.sum(f * w, axis=(1, 2), keepdims=True) / n
  var = jnp.sum(jnp.square(f - mean) * w, axis=(1, 2), keepdims=True) / n
  return (f - mean) * jax.lax.rsqrt(var + eps)


def latent_loss(pred, teacher_features, observed, cfg, axis_name=None):
  """Mean squared error of the predictor's output pred [B, H, W, D] against the normalised
  teacher features [B, H, W, D] over the pixels the tile observed on some date (observed
  [B, T, H, W]). Returns (this device's share of the global mean, metrics)."""
  weight = jnp.any(observed, axis=1).astype(jnp.float32)                    # [B, H, W]
  target = jax.lax.stop_gradient(normalise_targets(teacher_features, weight, cfg.eps))
  err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)    # [B, H, W]
  _, psum, _, ndev = collectives(axis_name)
  n = jnp.maximum(psum(jnp.sum(weight)), 1.0)
  total = jnp.sum(err * weight)
  # How varied the teacher's raw features are over pixels (collapse drives it to 0).
  f = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
  spread = jnp.mean(jnp.std(f, axis=(1, 2)))
  metrics = dict(latent=psum(jax.lax.stop_gradient(total)) / n,
                 latent_teacher_std=psum(spread) / ndev)
  return total / n * ndev, metrics
