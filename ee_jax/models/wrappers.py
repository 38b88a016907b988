"""Backbone + head models whose param trees put the backbone under the same key.

`PretrainModel` params: {'backbone': ..., 'head': ...} (projection head), plus the params
of the heads the active objectives add, under the names they give them ('recon' for the
masked objective, 'prototypes' for the prototype objective; ee_jax/objectives).
`SegmentationModel` params: {'backbone': ..., 'head': ...} (segmentation head).
So a partial restore is `params['backbone'] = pretrained['backbone']` and the pre-training
heads are simply never copied.
"""

import flax.linen as nn
import jax.numpy as jnp

from ee_jax.models.input_beside import input_channels

BACKBONE = "backbone"
HEAD = "head"


class PretrainModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> L2-normalised z [B, H, W, out], or with
  `all_outputs` a dict: features (backbone), proj (projection before normalisation), z,
  and what the objectives' heads add (`recon` [B, H, W, T * C], `scores` [B, H, W, K]).

  `heads`: the objectives' heads (`objectives.Head`, from `objectives.heads(config.loss)`),
  each run on the outputs so far; they exist only when an objective needs them, so a
  pre-training without them has the same params as before."""
  backbone: nn.Module
  head: nn.Module
  heads: tuple = ()

  @nn.compact
  def __call__(self, x, valid=None, all_outputs: bool = False):
    features = self.backbone(x, valid)
    proj = self.head(features, normalize=False)
    z = proj / jnp.sqrt(jnp.sum(proj * proj, axis=-1, keepdims=True) + 1e-12)
    out = dict(features=features, proj=proj, z=z)
    for head in self.heads:
      out.update(head(x, out, self.head.dtype, self.head.conv_impl))
    return out if all_outputs else z


class SegmentationModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> logits [B, H, W, num_classes].

  `head_input` ('' | 'raw' | 'raw3x3', ee_jax/models/input_beside.py): what the head sees
  beside the backbone's features; the head's params then depend on the number of dates."""
  backbone: nn.Module
  head: nn.Module
  head_input: str = ""

  def head_features(self, x, valid=None):
    """What the head classifies, [B, H, W, F]: the backbone's features and, with
    `head_input`, the input beside them. Uses the backbone's params alone."""
    features = self.backbone(x, valid)
    extra = input_channels(x, self.head_input)
    if extra is None:
      return features
    return jnp.concatenate([features, extra.astype(features.dtype)], axis=-1)

  def __call__(self, x, valid=None):
    return self.head(self.head_features(x, valid))
