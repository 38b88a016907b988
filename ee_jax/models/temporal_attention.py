"""The backbone `temporal_attention` (`temporal='attention'` before `config.model.backbone`):
the shared per-date 2D encoder with a light temporal attention at
the bottleneck, in the spirit of L-TAE / U-TAE (Garnot & Landrieu, 2020 and 2021).

Why: a masked mean treats every date alike, though some dates say more about the land
cover than others (a crop is told apart at green-up, not in winter). Per pixel of the
bottleneck, each head has one learned query; its keys are a linear map of the date's
features plus a sinusoidal encoding of the date's index in the series; a softmax over the
observed dates gives the head's weights. Each head pools its own group of the bottleneck's
channels (as in L-TAE); the weights averaged over heads, resized to each skip level and
restricted to the dates observed there, pool the skips. It is cheap (one Dense to the keys
and the queries) and any T works.

Unobserved dates get weight exactly 0, so their values never reach the output; a pixel
with no observed date falls back to uniform weights and stays finite.

TODO: encode the day of year (the tiles' `dates`) instead of the index, as L-TAE does, once
the models take dates as an input.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ee_jax.errors import ConfigError
from ee_jax.models.unet import UNetBase, level_weights, max_pool_2x2, temporal_pool

NAME = "temporal_attention"   # config.model.backbone (ee_jax/models/backbones.py)


def sinusoid_encoding(positions, dim: int, base: float = 1000.0):
  """positions [T] -> [T, dim]: sin on the even, cos on the odd channels, wavelengths from
  2 pi to 2 pi * base (the Transformer's encoding)."""
  half = (dim + 1) // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions.astype(jnp.float32)[:, None] * freq[None, :]
  pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(positions.shape[0], -1)
  return pe[:, :dim]


def attention_weights(scores, observed=None):
  """Softmax of `scores` [B, T, ...] over T (axis 1) among the observed dates.

  `observed` (bool, broadcastable to scores; None = all) marks the dates that may be
  attended: the others get exactly 0. Where no date is observed the weights are uniform,
  so a pixel without data stays finite. Computed in float32.
  """
  scores = scores.astype(jnp.float32)
  if observed is None:
    return jax.nn.softmax(scores, axis=1)
  observed = jnp.broadcast_to(observed, scores.shape)
  none = ~observed.any(axis=1, keepdims=True)
  observed = observed | none
  scores = jnp.where(none, 0.0, jnp.where(observed, scores, jnp.finfo(jnp.float32).min))
  scores = scores - jax.lax.stop_gradient(scores.max(axis=1, keepdims=True))
  e = jnp.where(observed, jnp.exp(scores), 0.0)
  return e / e.sum(axis=1, keepdims=True)


class TemporalAttention(nn.Module):
  """f [B, T, h, w, c], observed (bool [B, T, h, w] or None) -> (pooled [B, h, w, c],
  weights [B, T, h, w, heads])."""
  heads: int = 4
  key_dim: int = 16
  pe_base: float = 1000.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f, observed: Optional[jax.Array] = None):
    b, t, h, w, c = f.shape
    if c % self.heads:
      raise ValueError(f"TemporalAttention: the bottleneck width {c} is not divisible by "
                       f"attn_heads={self.heads} (config.model.attn_heads)")
    pe = sinusoid_encoding(jnp.arange(t), c, self.pe_base).astype(f.dtype)
    keys = nn.Dense(self.heads * self.key_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="key")(f + pe[None, :, None, None, :])
    keys = keys.reshape(b, t, h, w, self.heads, self.key_dim).astype(jnp.float32)
    query = self.param("query", nn.initializers.normal(1.0), (self.heads, self.key_dim),
                       self.param_dtype)
    scores = jnp.einsum("bthwnd,nd->bthwn", keys, query.astype(jnp.float32))
    weights = attention_weights(scores / math.sqrt(self.key_dim),
                                None if observed is None else observed[..., None])
    values = f.reshape(b, t, h, w, self.heads, c // self.heads).astype(jnp.float32)
    pooled = jnp.einsum("bthwn,bthwnd->bhwnd", weights, values).reshape(b, h, w, c)
    return pooled.astype(f.dtype), weights


class TemporalAttentionUNet(UNetBase):
  """x [B, T, H, W, C], valid (None, [B, T] or [B, T, H, W]) -> features [B, H, W, features].

  The attention's params sit under `enc_attention`, so an encoder-only restore
  (`init.encoder_only`) takes them with the encoder. Its weights are sown as
  `intermediates/attention` ([B, T, h, w, heads] at the bottleneck).
  """
  attn_heads: int = 4
  attn_key_dim: int = 16

  @nn.compact
  def __call__(self, x, valid: Optional[jax.Array] = None):
    self._check(x, valid, "TemporalAttentionUNet")
    b, t, h, w, c = x.shape
    if valid is not None:
      valid = valid.astype(jnp.float32)
    x = x.reshape(b * t, h, w, c)
    levels = []
    for i, width in enumerate(self.widths):
      if i > 0:
        x = max_pool_2x2(x)
      x = self._block(width, f"enc{i}")(x)
      levels.append(x.reshape((b, t) + x.shape[1:]))

    bottleneck = levels[-1]
    observed = _per_pixel(level_weights(valid, bottleneck.shape[2:4]))
    pooled, weights = TemporalAttention(
        self.attn_heads, self.attn_key_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        name="enc_attention")(bottleneck, None if observed is None else observed > 0)
    self.sow("intermediates", "attention", weights)
    mean_weights = weights.mean(axis=-1)                       # [B, T, hb, wb]

    skips = []
    for f in levels[:-1]:
      a = jax.image.resize(mean_weights, (b, t) + f.shape[2:4], "linear")
      v = _per_pixel(level_weights(valid, f.shape[2:4]))
      if v is not None:                    # dates unobserved at this level's pixel: 0
        a = a * v
      skips.append(temporal_pool(f, a, "masked_mean"))
    skips.append(pooled)
    return self._decode(skips)


def _per_pixel(weight):
  """[B, T] -> [B, T, 1, 1]; [B, T, h, w] and None unchanged."""
  return weight[:, :, None, None] if weight is not None and weight.ndim == 2 else weight


def from_config(cfg, **common) -> TemporalAttentionUNet:
  """`backbone='temporal_attention'`: the UNetBase fields `common`, and `attn_heads`
  (dividing the bottleneck width) and `attn_key_dim`."""
  heads = int(cfg.get("attn_heads", 4))
  if heads < 1 or cfg.widths[-1] % heads:
    raise ConfigError(f"config.model.attn_heads={heads} must be >= 1 and divide the "
                      f"bottleneck width config.model.widths[-1]={cfg.widths[-1]}")
  return TemporalAttentionUNet(**common, attn_heads=heads,
                               attn_key_dim=int(cfg.get("attn_key_dim", 16)))
