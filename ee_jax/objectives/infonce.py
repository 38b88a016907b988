"""Dense InfoNCE between two views (the `infonce` objective; the paper's contrastive core).

z1, z2 [B, H, W, E] are L2-normalised embeddings already brought back to the same frame
(dihedral undone), so pixel (i, j) is the same ground pixel in both. N anchor pixels per
image are drawn among pixels valid in both views (ee_jax/objectives/pairs.py); the keys are
the same pixels' embeddings from the other view, gathered from every device, so each anchor
has one positive (its own ground pixel) and B_global * N - 1 candidate negatives. Symmetric
over the two views. Its keys, `temperature` and `exclude_radius`, sit at the top of
`config.loss` (as before objectives had sections).

Across devices the loss must be the loss of the global batch. The returned `loss` is this
device's share, scaled so that its `pmean` over the axis is the global mean over valid
anchors; that is also what makes the `pmean` of the per-device gradients the gradient of
the global loss (the transpose of `all_gather` sums every device's cotangents onto the
keys' owner). `metrics` are already global (psum'd inside), so a pmean leaves them as is.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from ee_jax.objectives.base import Objective
from ee_jax.objectives.pairs import collectives, sample_pairs, take_pixels

_MASKED = -1e9  # finite, so masked logits give no NaNs in value or gradient


def default_config() -> ml_collections.ConfigDict:
  """InfoNCE's keys at the top of `config.loss`."""
  c = ml_collections.ConfigDict()
  c.temperature = 0.1
  c.exclude_radius = 0.0    # same-image negatives within this pixel distance dropped; 0 = off
  return c


@jax.custom_vjp
def similarities(anchors, keys):
  """anchors [B, N, E] . keys [K, E] -> [B, N, K]: `einsum("bne,ke->bnk")`, with a backward
  pass that never transposes the [B, N, K] cotangent.

  Why: differentiated as written, the keys' gradient contracts the cotangent over its
  anchor axes, and XLA CPU copies the whole [B N, K] matrix into transposed order to do it.
  Computed as (anchors^T g)^T it transposes only the [B N, E] anchors and the [E, K] result:
  one direction's loss, forward and backward, 6.1 -> 2.6 ms with 8 x 64 anchors and 1024
  keys on one CPU device (docs/perf_log.md). The same sums: the keys' gradient equal to
  float32 rounding (tests/test_losses.py).
  """
  return jnp.einsum("bne,ke->bnk", anchors, keys)


def _similarities_fwd(anchors, keys):
  return similarities(anchors, keys), (anchors, keys)


def _similarities_bwd(saved, g):
  anchors, keys = saved
  return (jnp.einsum("bnk,ke->bne", g, keys),
          jnp.einsum("bne,bnk->ek", anchors, g).T)


similarities.defvjp(_similarities_fwd, _similarities_bwd)


def dense_info_nce(z1, z2, valid1, valid2, key=None, *, num_anchors: int = 64,
                   temperature: float = 0.1, exclude_radius: float = 0.0,
                   positive_jitter: int = 0, positive_not_self: bool = False,
                   axis_name: Optional[str] = None,
                   anchor_idx=None):
  """Symmetric dense InfoNCE; returns (loss, metrics).

  z1, z2 float [B, H, W, E] (L2-normalised); valid1, valid2 bool [B, H, W].
  `anchor_idx` int [B, N] (flat pixel indices) replaces random sampling (tests, eval);
  anchors at pixels not valid in both views are masked out either way.
  `positive_jitter` r > 0: view 2's embedding is taken at a random pixel within r of the
  anchor's (needs `key`), so the two cannot be matched on pixel-scale texture that both
  views share; what they share is the surrounding ground (a field, its cover).
  `positive_not_self`: that pixel is never the anchor's own, so views that share dates
  share no per-pixel sensor noise at the positive.
  metrics: loss, pos_cos, neg_cos, top1 (positive retrieval accuracy), anchors (valid
  anchors per image).
  """
  idx, idx2, amask = sample_pairs(key, valid1, valid2, num_anchors=num_anchors,
                                  positive_jitter=positive_jitter,
                                  positive_not_self=positive_not_self, anchor_idx=anchor_idx)
  a1 = take_pixels(z1, idx).astype(jnp.float32)
  a2 = take_pixels(z2, idx2).astype(jnp.float32)
  return info_nce_pairs(a1, a2, amask, idx, z1.shape[2], temperature=temperature,
                        exclude_radius=exclude_radius, axis_name=axis_name)


def info_nce_pairs(a1, a2, amask, idx, width: int, *, temperature: float,
                   exclude_radius: float = 0.0, axis_name: Optional[str] = None):
  """InfoNCE over matched pairs a1, a2 [B, N, E] (mask amask [B, N]; anchors' flat pixel
  indices idx [B, N] in images of `width` columns, for the exclusion radius)."""
  b, n, e = a1.shape
  w = width
  gather, psum, dev, ndev = collectives(axis_name)
  k1, k2 = gather(a1).reshape(-1, e), gather(a2).reshape(-1, e)         # [K, E]
  kmask, kidx = gather(amask).reshape(-1), gather(idx).reshape(-1)      # [K]
  num_keys = k1.shape[0]

  # Anchor (b, n) of this device is key number target[b, n] of the gathered keys.
  img = dev * b + jnp.arange(b)                                          # global image id
  target = img[:, None] * n + jnp.arange(n)[None, :]                     # [B, N]
  key_ids = jnp.arange(num_keys)
  is_pos = key_ids[None, None, :] == target[..., None]                   # [B, N, K]
  negative = kmask[None, None, :] & ~is_pos
  if exclude_radius > 0:
    same_img = (key_ids // n)[None, None, :] == img[:, None, None]
    dr = (idx // w)[..., None] - (kidx // w)[None, None, :]
    dc = (idx % w)[..., None] - (kidx % w)[None, None, :]
    near = (dr * dr + dc * dc) <= exclude_radius ** 2
    negative = negative & ~(same_img & near)
  allowed = negative | is_pos

  weight = amask.astype(jnp.float32)
  count = jnp.maximum(psum(weight.sum()), 1.0)

  def direction(anchors, keys):
    cos = similarities(anchors, keys)
    logits = jnp.where(allowed, cos / temperature, _MASKED)
    pos = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - pos
    top1 = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
    return ce, cos, top1

  ce12, cos12, top12 = direction(a1, k2)
  ce21, _, top21 = direction(a2, k1)
  local_sum = jnp.sum(0.5 * (ce12 + ce21) * weight)
  loss = local_sum / count * ndev

  sg = jax.lax.stop_gradient
  neg_w = negative.astype(jnp.float32) * weight[..., None]
  pos_cos = jnp.sum(a1 * a2, axis=-1)
  metrics = dict(
      loss=psum(sg(local_sum)) / count,
      pos_cos=psum(sg(jnp.sum(pos_cos * weight))) / count,
      neg_cos=psum(sg(jnp.sum(cos12 * neg_w))) / jnp.maximum(psum(neg_w.sum()), 1.0),
      top1=psum(jnp.sum(0.5 * (top12 + top21) * weight)) / count,
      anchors=psum(weight.sum()) / (b * ndev),
  )
  return loss, metrics


class InfoNCE(Objective):
  """Compares the L2-normalised embeddings `z` at the matched pairs."""
  name, section, compares = "infonce", None, "z"
  default_weight = 1.0

  def default_config(self):
    return default_config()

  def loss(self, shared, loss_cfg, axis_name):
    pairs = shared.pairs
    loss, m = info_nce_pairs(*pairs.take("z"), pairs.amask, pairs.idx, pairs.width,
                             temperature=loss_cfg.temperature,
                             exclude_radius=loss_cfg.exclude_radius, axis_name=axis_name)
    m["infonce"] = m.pop("loss")
    return loss, m


OBJECTIVE = InfoNCE()
