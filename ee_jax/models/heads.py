"""Heads on top of the backbone's per-pixel features, kept separate from the backbone so
pre-training and fine-tuning share the backbone's parameters and nothing else."""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """1x1 convs D -> hidden -> out, L2-normalised (fp32), for the dense contrastive loss.

  A non-linear head between features and loss keeps the backbone's features from being
  forced to the loss's invariances (as in SimCLR); it is dropped after pre-training.
  """
  hidden: Optional[int] = None  # None -> D (the input width)
  out: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f):
    hidden = self.hidden or f.shape[-1]
    z = nn.Conv(hidden, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype)(f)
    z = nn.relu(z)
    z = nn.Conv(self.out, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype)(z)
    z = z.astype(jnp.float32)  # the loss divides by tau: normalise and compare in fp32
    return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class SegmentationHead(nn.Module):
  """1x1 conv to class logits (fp32 out, so the cross-entropy is computed in fp32)."""
  num_classes: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f):
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                     param_dtype=self.param_dtype)(f)
    return logits.astype(jnp.float32)
