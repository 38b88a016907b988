"""Backbone + head models whose param trees put the backbone under the same key.

`PretrainModel` params: {'backbone': ..., 'head': ...} (projection head).
`SegmentationModel` params: {'backbone': ..., 'head': ...} (segmentation head).
So a partial restore is `params['backbone'] = pretrained['backbone']` and the projection
head is simply never copied.
"""

import flax.linen as nn

BACKBONE = "backbone"
HEAD = "head"


class PretrainModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> L2-normalised z [B, H, W, out]."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, valid=None):
    return self.head(self.backbone(x, valid))


class SegmentationModel(nn.Module):
  """x [B, T, H, W, C] (+ optional valid weight) -> logits [B, H, W, num_classes]."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, valid=None):
    return self.head(self.backbone(x, valid))
