"""Masked spectral-temporal reconstruction (the `masked` objective).

Each view's input loses, independently per view: whole dates (`date_ratio`), band groups
per date (`band_ratio` over `band_groups` contiguous groups of the band axis: neighbouring
S2 bands share a spectral region), and square patches over all dates and bands
(`patch_ratio` of `patch_size` patches). Hidden values become 0 (the band mean after
normalisation) and a fully hidden date of a pixel is marked unobserved for the backbone. A
light head (`models.ReconstructionHead`, `hidden` 0 = linear) predicts the view's normalised
input before any augmentation (`clean`) at every date and band; the loss is the mean
squared error where the model did not see the value (hidden here, or hidden by the views'
synthetic clouds and date dropping) and the tile observed it.

Why: to fill in a hidden date, band group or patch, the features must carry the pixel's
spectral-temporal signature, completed from the dates, bands and neighbours that are seen
(SITS-BERT, Presto, SatMAE); unlike pixel-instance contrast there are no negatives, so
pixels of other fields of the same class are never pushed apart. With `shape_weight` the
head also reconstructs each date's brightness-free spectral shape (`spectral_shape`).
"""

import jax
import jax.numpy as jnp
import ml_collections

from ee_jax.errors import ConfigError
from ee_jax.models.heads import ReconstructionHead
from ee_jax.objectives.base import Head, Objective
from ee_jax.objectives.pairs import collectives

MASK_SALT = 0x6D736B  # separates the hiding's key stream from the augmentation's


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.date_ratio = 0.25     # per view and date: probability the whole date is hidden
  c.band_ratio = 0.15     # per view, date and band group: probability it is hidden
  c.band_groups = 4       # contiguous groups of the band axis (at most one a band)
  c.patch_ratio = 0.25    # per view: share of patches hidden on every date and band
  c.patch_size = 4        # patch side, pixels
  c.hidden = 0            # reconstruction head: 0 = linear 1x1 conv, > 0 = hidden width
  c.visible_weight = 0.0  # weight of the error where the value was seen (0 = hidden only)
  c.shape_weight = 0.0    # > 0: also reconstruct each date's spectral shape (`spectral_shape`)
                          # with this weight; the head predicts it beside the bands
  return c


def spectral_shape(clean, observed, mean, std, axis_name=None):
  """Each date's spectrum without its brightness, on an equal footing across bands.

  clean [B, T, S, S, C] normalised -> digital numbers x (clipped at 0) -> (x_c - m) /
  (x_c + m), m the mean over the bands of that pixel and date: a normalised difference of
  each band against the pixel's brightness, in [-1, 1] (FG-MAE reconstructs such indices;
  this one needs no band names). Each band's index is then standardised over the observed
  pixels of the global batch (statistics not differentiated: they are targets), so a small
  spectral difference weighs as much in the error as a large one. Why: the error on the
  standardised bands alone is dominated by a few directions of large variance (brightness,
  vigour), and the features keep those and drop the rest (docs/pretraining.md, section 1)."""
  _, psum, _, _ = collectives(axis_name)
  dn = jnp.maximum(clean.astype(jnp.float32) * std + mean, 0.0)
  m = jnp.mean(dn, axis=-1, keepdims=True)
  shape = (dn - m) / (dn + m + 1.0)
  w = jnp.broadcast_to(observed[..., None], shape.shape).astype(jnp.float32)
  axes = (0, 1, 2, 3)
  n = jnp.maximum(psum(jnp.sum(w, axis=axes)), 1.0)
  mu = psum(jnp.sum(shape * w, axis=axes)) / n
  var = psum(jnp.sum(jnp.square(shape - mu) * w, axis=axes)) / n
  out = (shape - mu) / jnp.sqrt(var + 1e-6)
  return jax.lax.stop_gradient(jnp.where(w > 0, out, 0.0))


def hide_mask(key, t: int, s: int, c: int, cfg):
  """bool [T, S, S, C]: which values of one view are hidden. At least one date keeps
  something visible (a date chosen at random is never hidden as a whole)."""
  if cfg.patch_size < 1 or cfg.band_groups < 1:
    raise ConfigError(f"config.loss.masked: patch_size and band_groups must be >= 1; got "
                      f"{cfg.patch_size}, {cfg.band_groups}")
  num_groups = min(cfg.band_groups, c)  # fewer bands than groups: one band a group
  k_date, k_keep, k_band, k_patch = jax.random.split(key, 4)
  dates = jax.random.bernoulli(k_date, cfg.date_ratio, (t,))
  dates = dates.at[jax.random.randint(k_keep, (), 0, t)].set(False)
  group_of_band = (jnp.arange(c) * num_groups) // c                       # [C]
  groups = jax.random.bernoulli(k_band, cfg.band_ratio, (t, num_groups))
  bands = groups[:, group_of_band]                                         # [T, C]
  p = cfg.patch_size
  n = -(-s // p)
  patches = jax.random.bernoulli(k_patch, cfg.patch_ratio, (n, n))
  patches = jnp.repeat(jnp.repeat(patches, p, 0), p, 1)[:s, :s]            # [S, S]
  return (dates[:, None, None, None] | bands[:, None, None, :]
          | patches[None, :, :, None])


def hide(keys, view, cfg):
  """The view with its hidden values zeroed and fully hidden (date, pixel)s unobserved;
  `keys` [B] (one per example). Returns (view, hidden bool [B, T, S, S, C])."""
  b, t, s, _, c = view["image"].shape
  hidden = jax.vmap(lambda k: hide_mask(k, t, s, c, cfg))(keys)
  image = jnp.where(hidden, 0.0, view["image"])
  date_valid = view["date_valid"] & ~jnp.all(hidden, axis=-1)
  return dict(view, image=image, date_valid=date_valid), hidden


def reconstruction_loss(recon, clean, observed, date_valid, hidden, cfg, axis_name=None):
  """Mean squared error of recon [B, S, S, T * C] against clean [B, T, S, S, C] where the
  model did not see the value (hidden, or its date unobserved in the view: date_valid
  [B, T, S, S]) and the tile observed it (observed [B, T, S, S]); plus `visible_weight` x
  the error where it saw it. Returns (loss: this device's share of the global mean, metrics)."""
  b, t, s, _, c = clean.shape
  pred = jnp.transpose(recon.reshape(b, s, s, t, c), (0, 3, 1, 2, 4))
  err = jnp.square(pred - clean.astype(jnp.float32))
  unseen = hidden | ~date_valid[..., None]
  target = jnp.broadcast_to(observed[..., None], err.shape)
  w_hidden = (unseen & target).astype(jnp.float32)
  w_seen = (~unseen & target).astype(jnp.float32)
  _, psum, _, ndev = collectives(axis_name)
  n_hidden = jnp.maximum(psum(w_hidden.sum()), 1.0)
  n_seen = jnp.maximum(psum(w_seen.sum()), 1.0)
  sum_hidden, sum_seen = jnp.sum(err * w_hidden), jnp.sum(err * w_seen)
  loss = (sum_hidden / n_hidden + cfg.visible_weight * sum_seen / n_seen) * ndev
  sg = jax.lax.stop_gradient
  metrics = dict(masked=psum(sg(sum_hidden)) / n_hidden,
                 masked_seen=psum(sg(sum_seen)) / n_seen,
                 masked_share=n_hidden / jnp.maximum(n_hidden + n_seen, 1.0))
  return loss, metrics


def _recon_head(x, out, *, dtype, conv_impl, hidden, shape):
  """The head predicting every date and band of the input: [B, H, W, T * C]; with `shape`
  also each date's spectral shape, `recon_shape` [B, H, W, T * C]."""
  size = x.shape[1] * x.shape[4]
  head = ReconstructionHead(out=size * (2 if shape else 1), hidden=hidden, dtype=dtype,
                            conv_impl=conv_impl, name="recon")
  y = head(out["features"])
  return {"recon": y[..., :size], "recon_shape": y[..., size:]} if shape else {"recon": y}


class Masked(Objective):
  """Hides parts of both views before the forward pass; reconstructs them (`recon`)."""
  name, section = "masked", "masked"

  def default_config(self):
    return default_config()

  def head(self, loss_cfg):
    return Head(_recon_head, (("hidden", int(loss_cfg.masked.hidden)),
                              ("shape", float(loss_cfg.masked.get("shape_weight", 0.0)) > 0)))

  def prepare_views(self, keys, v1, v2, loss_cfg):
    mask_keys = jax.vmap(lambda k: jax.random.fold_in(k, MASK_SALT))(keys)
    v1, h1 = hide(jax.vmap(lambda k: jax.random.fold_in(k, 1))(mask_keys), v1,
                  loss_cfg.masked)
    v2, h2 = hide(jax.vmap(lambda k: jax.random.fold_in(k, 2))(mask_keys), v2,
                  loss_cfg.masked)
    return v1, v2, {"hidden": jnp.concatenate([h1, h2], axis=0)}

  def loss(self, shared, loss_cfg, axis_name):
    cfg = loss_cfg.masked
    where = (shared.view("observed"), shared.view("date_valid"), shared.extras["hidden"], cfg,
             axis_name)
    loss, metrics = reconstruction_loss(shared.out["recon"], shared.view("clean"), *where)
    weight = float(cfg.get("shape_weight", 0.0))
    if weight > 0:
      target = spectral_shape(shared.view("clean"), shared.view("observed"), shared.mean,
                              shared.std, axis_name)
      shape_loss, shape_metrics = reconstruction_loss(shared.out["recon_shape"], target, *where)
      loss = loss + weight * shape_loss
      metrics.update(masked_shape=shape_metrics["masked"],
                     masked_shape_seen=shape_metrics["masked_seen"])
    return loss, metrics


OBJECTIVE = Masked()
