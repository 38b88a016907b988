"""The backbone `unet3d` (`temporal='conv3d'` before `config.model.backbone`): a UNet3D
whose encoder convolves over (T, H, W).

Why: the 'shared' encoder sees each date alone, so a pixel's temporal profile (crop
phenology) is only combined by the pooling; 3x3x3 convolutions let the encoder learn
temporal patterns (green-up, harvest) at every level. Time is kept through the encoder
(spatial-only downsampling) and collapsed at each skip and the bottleneck by the masked
mean over observed dates (`temporal_pool`), so any T works and the decoder is the ordinary
2D one of unet.py.

Unobserved inputs are zeroed (0 = the band mean after normalisation): an unobserved date's
values then never reach the output, though its position in the series still does (the
convolutions see a zero date there).
"""

from typing import Optional

import flax.linen as nn
import jax

from ee_jax.models.unet import UNetBase, level_weights, max_pool_2x2, temporal_pool

NAME = "unet3d"   # config.model.backbone (ee_jax/models/backbones.py)


class UNet3D(UNetBase):
  """x [B, T, H, W, C], valid (None, [B, T] or [B, T, H, W]) -> features [B, H, W, features]."""

  @nn.compact
  def __call__(self, x, valid: Optional[jax.Array] = None):
    self._check(x, valid, "UNet3D")
    if valid is not None:
      valid = valid.astype(x.dtype)
      vw = valid if valid.ndim == 4 else valid[:, :, None, None]
      x = x * vw[..., None]

    skips = []
    for i, width in enumerate(self.widths):
      if i > 0:                                   # halve H, W; keep T
        x = max_pool_2x2(x)
      x = self._block(width, f"enc{i}", kernel=(3, 3, 3))(x)
      skips.append(temporal_pool(x, level_weights(valid, x.shape[2:4]), self.temporal_pool))
    return self._decode(skips)


def from_config(cfg, **common) -> UNet3D:
  """`backbone='unet3d'`: the UNetBase fields `common`; no options of its own."""
  del cfg
  return UNet3D(**common)
