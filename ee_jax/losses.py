"""Dense InfoNCE between two views (docs/design.md, "Dense InfoNCE").

z1, z2 [B, H, W, E] are L2-normalised embeddings already brought back to the same frame
(dihedral undone), so pixel (i, j) is the same ground pixel in both. N anchor pixels per
image are drawn among pixels valid in both views; the keys are the same pixels' embeddings
from the other view, gathered from every device, so each anchor has one positive (its own
ground pixel) and B_global * N - 1 candidate negatives. Symmetric over the two views.

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

_MASKED = -1e9  # finite, so masked logits give no NaNs in value or gradient


def default_config() -> ml_collections.ConfigDict:
  """Loss config, to embed as `config.loss`."""
  c = ml_collections.ConfigDict()
  c.num_anchors = 64        # anchor pixels per image (fewer valid pixels -> masked anchors)
  c.temperature = 0.1
  c.exclude_radius = 0.0    # same-image negatives within this pixel distance dropped; 0 = off
  c.positive_jitter = 0     # the positive is a random pixel within this many pixels (per
                            # axis) of the anchor's ground pixel; 0 = the pixel itself
  c.positive_not_self = False  # with positive_jitter: never the anchor's own pixel (views
                               # that share dates then share no sensor noise at the positive)
  return c


def _per_image_keys(key, b: int):
  """A single key is split into one per image; a batch of keys [B] is used as is."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single = key.ndim == 0 if typed else key.ndim == 1
  return jax.random.split(key, b) if single else key


def sample_anchors(key, valid_both, num_anchors: int):
  """N random pixels per image among the valid ones, without replacement.

  valid_both bool [B, P] -> (idx int32 [B, N], mask bool [B, N]) with N = min(num_anchors, P);
  where an image has fewer than N valid pixels the extra anchors are masked out.
  `key`: one key, or one per image ([B]; device-count independent when per example).
  """
  b, p = valid_both.shape
  n = min(num_anchors, p)
  keys = _per_image_keys(key, b)
  u = jax.vmap(lambda k: jax.random.uniform(k, (p,)))(keys)
  _, idx = jax.lax.top_k(jnp.where(valid_both, u, u - 2.0), n)  # valid pixels rank first
  return idx.astype(jnp.int32), jnp.take_along_axis(valid_both, idx, axis=1)


def jitter_positions(key, idx, h: int, w: int, radius: int, not_self: bool = False):
  """Flat pixel indices idx [B, N] moved by up to `radius` pixels per axis (clipped to the
  image); `key`: one key or one per image, as for `sample_anchors`. `not_self`: the move is
  never (0, 0) (uniform over the other offsets; clipping at the border can still undo it)."""
  keys = _per_image_keys(key, idx.shape[0])
  side = 2 * radius + 1
  count = side * side - (1 if not_self else 0)

  def draw(k):
    o = jax.random.randint(k, idx.shape[1:], 0, count)
    if not_self:
      o = o + (o >= side * side // 2)  # skip the centre offset
    return jnp.stack([o // side - radius, o % side - radius], axis=-1)

  move = jax.vmap(draw)(keys)
  row = jnp.clip(idx // w + move[..., 0], 0, h - 1)
  col = jnp.clip(idx % w + move[..., 1], 0, w - 1)
  return (row * w + col).astype(jnp.int32)


def sample_pairs(key, valid1, valid2, *, num_anchors: int, positive_jitter: int = 0,
                 positive_not_self: bool = False, anchor_idx=None):
  """The matched pixel pairs every pair objective uses: (idx, idx2, amask).

  idx int32 [B, N]: anchor pixels of view 1 (flat indices, valid in both views); idx2: the
  positive's pixel in view 2 (= idx, or jittered within `positive_jitter`); amask bool
  [B, N]: pairs that count. `anchor_idx` replaces random anchors (tests, eval).
  """
  b, h, w = valid1.shape
  both = (valid1 & valid2).reshape(b, h * w)
  if anchor_idx is None:
    if key is None:
      raise ValueError("dense_info_nce: pass `key` (random anchors) or `anchor_idx`")
    idx, amask = sample_anchors(key, both, num_anchors)
  else:
    idx = jnp.asarray(anchor_idx, jnp.int32)
    amask = jnp.take_along_axis(both, idx, axis=1)
  idx2 = idx
  if positive_jitter > 0:
    if key is None:
      raise ValueError("dense_info_nce: positive_jitter needs `key`")
    jitter_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(_per_image_keys(key, b))
    idx2 = jitter_positions(jitter_keys, idx, h, w, positive_jitter, positive_not_self)
    amask = amask & jnp.take_along_axis(valid2.reshape(b, h * w), idx2, axis=1)
    if positive_not_self:
      amask = amask & (idx2 != idx)  # a border clip landed back on the anchor
  return idx, idx2, amask


def take_pixels(z, at):
  """z [B, H, W, E] at flat pixel indices at [B, N] -> [B, N, E]."""
  b, h, w, e = z.shape
  return jnp.take_along_axis(z.reshape(b, h * w, e), at[..., None], axis=1)


@jax.custom_vjp
def similarities(anchors, keys):
  """anchors [B, N, E] . keys [K, E] -> [B, N, K]: `einsum("bne,ke->bnk")`, with a backward
  pass that never transposes the [B, N, K] cotangent.

  Why: differentiated as written, the keys' gradient contracts the cotangent over its
  anchor axes, and XLA CPU copies the whole [B N, K] matrix into transposed order to do it.
  Computed as (anchors^T g)^T it transposes only the [B N, E] anchors and the [E, K] result:
  one direction's loss, forward and backward, 6.1 -> 2.6 ms with 8 x 64 anchors and 1024
  keys on one CPU device (docs/scaling.md). The same sums: the keys' gradient equal to
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


def collectives(axis_name: Optional[str]):
  """(gather, psum, device index, device count) over `axis_name`; identities without one."""
  if axis_name is None:
    return (lambda x: x), (lambda x: x), 0, 1
  return (lambda x: jax.lax.all_gather(x, axis_name, tiled=True),
          lambda x: jax.lax.psum(x, axis_name),
          jax.lax.axis_index(axis_name), jax.lax.psum(1, axis_name))


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
