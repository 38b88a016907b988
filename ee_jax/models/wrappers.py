"""Backbone + head models whose param trees put the backbone under the same key.

`PretrainModel` params: {'backbone': ..., 'head': ...} (projection head), plus
'recon' (masked objective), 'prototypes' (prototype objective) and 'latent' (the latent
objective's predictor) when those are used.
`SegmentationModel` params: {'backbone': ..., 'head': ...} (segmentation head).
So a partial restore is `params['backbone'] = pretrained['backbone']` and the pre-training
heads are simply never copied.
"""

import flax.linen as nn
import jax.numpy as jnp

from ee_jax.models.heads import Prototypes, ReconstructionHead

BACKBONE = "backbone"
HEAD = "head"


class PretrainModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> L2-normalised z [B, H, W, out], or with
  `all_outputs` a dict: features (backbone), proj (projection before normalisation), z,
  and `recon` [B, H, W, T * C] / `scores` [B, H, W, K] / `latent` [B, H, W, D] where
  those heads exist.

  The optional heads exist (`recon_hidden` >= 0, `num_prototypes` > 0) only when an
  objective needs them, so a pre-training without them has the same params as before."""
  backbone: nn.Module
  head: nn.Module
  recon_hidden: int = -1        # -1 = no reconstruction head; 0 = linear; > 0 hidden width
  num_prototypes: int = 0       # 0 = no prototypes
  latent_hidden: int = -1       # -1 = no latent predictor; 0 = linear; > 0 hidden width

  @nn.compact
  def __call__(self, x, valid=None, all_outputs: bool = False):
    features = self.backbone(x, valid)
    proj = self.head(features, normalize=False)
    z = proj / jnp.sqrt(jnp.sum(proj * proj, axis=-1, keepdims=True) + 1e-12)
    out = dict(features=features, proj=proj, z=z)
    if self.recon_hidden >= 0:
      out["recon"] = ReconstructionHead(out=x.shape[1] * x.shape[4], hidden=self.recon_hidden,
                                        dtype=self.head.dtype, conv_impl=self.head.conv_impl,
                                        name="recon")(features)
    if self.latent_hidden >= 0:
      out["latent"] = ReconstructionHead(out=features.shape[-1], hidden=self.latent_hidden,
                                         dtype=self.head.dtype, conv_impl=self.head.conv_impl,
                                         name="latent")(features)
    if self.num_prototypes > 0:
      out["scores"] = Prototypes(self.num_prototypes, name="prototypes")(z)
    return out if all_outputs else z


class SegmentationModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> logits [B, H, W, num_classes]."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, valid=None):
    return self.head(self.backbone(x, valid))
