"""Matched pixel pairs between the two views, and the collectives every loss uses.

The pair objectives (InfoNCE, VICReg, prototypes) compare the views at the same ground
pixels: N anchor pixels per image drawn among pixels valid in both views, each with its
positive in the other view (the same pixel, or a jittered neighbour). The pre-training step
samples them once per step for all of them. Their config keys (`num_anchors`,
`positive_jitter`, `positive_not_self`) sit at the top of `config.loss`.

Across devices a loss must be the loss of the global batch: each returns this device's
share, scaled so that its `pmean` over the axis is the global mean (`collectives`).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The pair sampling's keys at the top of `config.loss`."""
  c = ml_collections.ConfigDict()
  c.num_anchors = 64        # anchor pixels per image (fewer valid pixels -> masked anchors)
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


def collectives(axis_name: Optional[str]):
  """(gather, psum, device index, device count) over `axis_name`; identities without one."""
  if axis_name is None:
    return (lambda x: x), (lambda x: x), 0, 1
  return (lambda x: jax.lax.all_gather(x, axis_name, tiled=True),
          lambda x: jax.lax.psum(x, axis_name),
          jax.lax.axis_index(axis_name), jax.lax.psum(1, axis_name))
