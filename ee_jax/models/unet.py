"""The UNet backbone: per-pixel features [B, H, W, D] from a (multi-date) image.

Why these choices (docs/design.md, "The method"):
- GroupNorm, not BatchNorm: statistics must not depend on the per-device batch size, and
  there are no batch statistics to carry in the train state or to sync across devices.
- Decoder upsampling by `jax.image.resize` to the skip's exact size, then a 3x3 conv:
  transpose convolutions are slow under XLA, and resizing to the skip's shape (with SAME
  max-pooling on the way down) makes ANY H, W work; there is no divisibility requirement.
- The backbone `unet` (`config.model.backbone`); its option `temporal='stack'`: dates are
  stacked into channels (cheap; T fixed by the first conv's kernel). `temporal='shared'`:
  one 2D encoder applied to every date (dates folded into the batch), features pooled over
  time at every skip level and the bottleneck (any T).
- The backbones `unet3d` (ee_jax/models/unet3d.py) and `temporal_attention`
  (ee_jax/models/temporal_attention.py) subclass `UNetBase` here: same fields, blocks and
  2D decoder, so their param names match (enc*, up*, dec*, out*) and only the encoder differs.
- `dtype` is the compute dtype (bf16 switch); params stay `param_dtype` (fp32).
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ee_jax.errors import ConfigError
from ee_jax.models.conv import conv

NAME = "unet"                       # config.model.backbone (ee_jax/models/backbones.py)
TEMPORAL_MODES = ("stack", "shared")  # config.model.temporal, the UNet's option
TEMPORAL_POOLS = ("masked_mean", "mean", "max")


def _groups(num_groups: int, channels: int) -> int:
  """Largest group count <= num_groups dividing `channels`, so any width is legal."""
  return math.gcd(num_groups, channels)


NORM_STATS = ("tile", "pixel")


def max_pool_2x2(x):
  """2x2, stride-2, SAME max-pooling over the two axes before channels ([..., H, W, C]).

  The same values and gradient as `nn.max_pool`, ties included (the first maximum of a
  window in row-major order takes the gradient). Even sizes pool as a reshape and a max
  with that gradient written out, which XLA CPU computes 3-8x faster than `nn.max_pool`'s
  select-and-scatter (docs/perf_log.md); odd sizes (ceil) take `nn.max_pool`.
  """
  *_, h, w, _ = x.shape
  if h % 2 or w % 2:
    window = (1,) * (x.ndim - 4) + (2, 2)
    return nn.max_pool(x, window, strides=window, padding="SAME")
  return _even_max_pool(x)


def _windows(x):
  *lead, h, w, c = x.shape
  return x.reshape(*lead, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _even_max_pool(x):
  return _windows(x).max(axis=(-4, -2))


def _even_max_pool_fwd(x):
  y = _even_max_pool(x)
  return y, (x, y)


def _even_max_pool_bwd(residuals, dy):
  x, y = residuals
  hit = _windows(x) == y[..., :, None, :, None, :]
  e00, e01, e10, e11 = (hit[..., i, :, j, :] for i in (0, 1) for j in (0, 1))
  first = (e00, e01 & ~e00, e10 & ~(e00 | e01), e11 & ~(e00 | e01 | e10))
  rows = [jnp.stack(first[2 * i:2 * i + 2], axis=-2) for i in (0, 1)]
  take = jnp.stack(rows, axis=-4)                           # [..., H/2, 2, W/2, 2, C]
  dx = jnp.where(take, dy[..., :, None, :, None, :], jnp.zeros((), dy.dtype))
  return (dx.reshape(x.shape),)


_even_max_pool.defvjp(_even_max_pool_fwd, _even_max_pool_bwd)


def group_norm(channels: int, num_groups: int, stats: str, dtype, param_dtype, name=None):
  """GroupNorm whose statistics are taken over the tile (H, W and the group's channels) or
  per pixel (the group's channels only).

  'pixel' makes a pixel's features independent of what else is in the tile beyond the
  receptive field: tiles of a scene blend without level shifts, and absolute levels
  (reflectance) are not normalised away by the tile's content.
  """
  if stats not in NORM_STATS:
    raise ValueError(f"UNet.norm_stats: unknown '{stats}'; known: {NORM_STATS}")
  return nn.GroupNorm(num_groups=_groups(num_groups, channels), dtype=dtype,
                      param_dtype=param_dtype, name=name,
                      reduction_axes=(-1,) if stats == "pixel" else None)


class ConvBlock(nn.Module):
  """`convs` x (conv -> GroupNorm -> activation); `kernel` (3, 3), or (3, 3, 3) over
  (T, H, W) for the 3D encoder."""
  features: int
  convs: int = 2
  num_groups: int = 8
  norm_stats: str = "tile"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel: Sequence[int] = (3, 3)
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    for _ in range(self.convs):
      x = conv(self.features, self.kernel, self.conv_impl, self.dtype, self.param_dtype)(x)
      x = group_norm(self.features, self.num_groups, self.norm_stats, self.dtype,
                     self.param_dtype)(x)
      x = nn.relu(x)
    return x


def _pool_weights(weight, shape_hw):
  """Per-pixel date weights [B, T, H, W] brought to a level's (h, w) by area averaging."""
  if weight.shape[2:] == tuple(shape_hw):
    return weight
  # SAME max-pooling halves with ceil; 'linear' antialiased resize averages the footprint.
  return jax.image.resize(weight, weight.shape[:2] + tuple(shape_hw), "linear", antialias=True)


def temporal_pool(x, weight, mode: str):
  """Pools x [B, T, h, w, c] over T.

  `weight` (None, [B, T] or [B, T, h, w]; 1 = date observed) is used by 'masked_mean' and
  'max'; where a pixel has no observed date at all, it falls back to the unweighted pool so
  the output stays finite. 'mean' ignores the weight.
  """
  if mode == "mean" or weight is None:
    return x.mean(axis=1) if mode != "max" else x.max(axis=1)
  w = weight.astype(jnp.float32)
  if w.ndim == 2:
    w = w[:, :, None, None]
  w = w[..., None]                                           # [B, T, h, w, 1]
  none_valid = w.sum(axis=1, keepdims=True) <= 0
  w = jnp.where(none_valid, 1.0, w)
  if mode == "masked_mean":
    out = (x.astype(jnp.float32) * w).sum(axis=1) / w.sum(axis=1)
    return out.astype(x.dtype)
  if mode == "max":
    return jnp.where(w > 0, x, jnp.finfo(x.dtype).min).max(axis=1)
  raise ValueError(f"temporal_pool: unknown mode '{mode}'; known: {TEMPORAL_POOLS}")


def check_valid_shape(x, valid, name: str):
  """`valid` must be None, [B, T] or [B, T, H, W] matching x [B, T, H, W, C]."""
  if valid is not None and tuple(valid.shape) not in (x.shape[:2], x.shape[:4]):
    raise ValueError(f"{name}: valid must be [B, T] or [B, T, H, W] for x {x.shape}; "
                     f"got {valid.shape}")


def level_weights(valid, shape_hw):
  """The date weights at a level of size `shape_hw`: [B, T] as is, [B, T, H, W] resized."""
  if valid is None or valid.ndim == 2:
    return valid
  return _pool_weights(valid, shape_hw)


class UNetBase(nn.Module):
  """The fields, blocks and 2D decoder shared by every temporal mode's UNet."""
  widths: Sequence[int] = (32, 64, 128, 256)
  features: int = 64
  convs_per_block: int = 2
  num_groups: int = 8
  norm_stats: str = "tile"
  temporal_pool: str = "masked_mean"
  resize_method: str = "bilinear"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_impl: str = "auto"         # how convolutions are computed (ee_jax/models/conv.py)

  def _block(self, width, name, kernel=(3, 3)):
    return ConvBlock(width, self.convs_per_block, self.num_groups, self.norm_stats,
                     self.dtype, self.param_dtype, kernel, self.conv_impl, name=name)

  def _decode(self, skips):
    """skips[i] [B, h_i, w_i, widths[i]] (the last one is the bottleneck) -> features
    [B, H, W, features]: resize + conv up, concatenate the skip, ConvBlock, per level."""
    skips = list(skips)
    y = skips.pop()
    for i in reversed(range(len(self.widths) - 1)):
      skip = skips[i]
      y = jax.image.resize(y, y.shape[:1] + skip.shape[1:3] + y.shape[3:], self.resize_method)
      y = conv(self.widths[i], (3, 3), self.conv_impl, self.dtype, self.param_dtype,
               name=f"up{i}")(y)
      y = jnp.concatenate([y, skip.astype(y.dtype)], axis=-1)
      y = self._block(self.widths[i], f"dec{i}")(y)

    y = conv(self.features, (1, 1), self.conv_impl, self.dtype, self.param_dtype,
             name="out")(y)
    y = group_norm(self.features, self.num_groups, self.norm_stats, self.dtype,
                   self.param_dtype, name="out_norm")(y)
    return nn.relu(y)

  def _check(self, x, valid, name):
    if x.ndim != 5:
      raise ValueError(f"{name} expects x [B, T, H, W, C]; got shape {x.shape}")
    if self.temporal_pool not in TEMPORAL_POOLS:
      raise ValueError(f"{name}.temporal_pool: unknown '{self.temporal_pool}'; "
                       f"known: {TEMPORAL_POOLS}")
    check_valid_shape(x, valid, name)


class UNet(UNetBase):
  """UNet over x [B, T, H, W, C] (normalised float) -> features [B, H, W, features].

  `widths[i]` is the width of level i; there are len(widths) - 1 downsamplings (2x2 SAME
  max-pool, so odd sizes are fine). `valid` (optional, [B, T] or [B, T, H, W], 1 = date
  observed) weights the temporal pooling in 'shared' mode; in 'stack' mode it zeroes the
  unobserved inputs (0 = the band mean after normalisation).
  """
  temporal: str = "stack"

  @nn.compact
  def __call__(self, x, valid: Optional[jax.Array] = None):
    if self.temporal not in ("stack", "shared"):
      raise ValueError(f"UNet.temporal: unknown '{self.temporal}'; known: {TEMPORAL_MODES} "
                       f"(other backbones: config.model.backbone)")
    self._check(x, valid, "UNet")
    b, t, h, w, c = x.shape
    if valid is not None:
      valid = valid.astype(x.dtype)

    if self.temporal == "stack":
      if valid is not None:
        vw = valid if valid.ndim == 4 else valid[:, :, None, None]
        x = x * vw[..., None]
      x = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h, w, t * c)
      pool = lambda f: f                                      # noqa: E731
    else:
      x = x.reshape(b * t, h, w, c)

      def pool(f):
        f = f.reshape((b, t) + f.shape[1:])
        return temporal_pool(f, level_weights(valid, f.shape[2:4]), self.temporal_pool)

    skips = []
    for i, width in enumerate(self.widths):
      if i > 0:
        x = max_pool_2x2(x)
      x = self._block(width, f"enc{i}")(x)
      skips.append(pool(x))
    return self._decode(skips)


def from_config(cfg, **common) -> UNet:
  """`backbone='unet'`: `common` are the UNetBase fields; `cfg.temporal` its own option."""
  if cfg.temporal not in TEMPORAL_MODES:
    raise ConfigError(f"config.model.temporal: unknown '{cfg.temporal}'; known: "
                      f"{TEMPORAL_MODES} (other backbones: config.model.backbone)")
  return UNet(**common, temporal=cfg.temporal)
