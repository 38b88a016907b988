"""Heads on top of the backbone's per-pixel features, kept separate from the backbone so
pre-training and fine-tuning share the backbone's parameters and nothing else."""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from ee_jax.models.conv import conv


class ProjectionHead(nn.Module):
  """1x1 convs D -> hidden -> out, L2-normalised (fp32), for the dense contrastive loss.

  A non-linear head between features and loss keeps the backbone's features from being
  forced to the loss's invariances (as in SimCLR); it is dropped after pre-training.
  """
  hidden: Optional[int] = None  # None -> D (the input width)
  out: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, f, normalize: bool = True):
    hidden = self.hidden or f.shape[-1]
    z = conv(hidden, (1, 1), self.conv_impl, self.dtype, self.param_dtype)(f)
    z = nn.relu(z)
    z = conv(self.out, (1, 1), self.conv_impl, self.dtype, self.param_dtype)(z)
    z = z.astype(jnp.float32)  # the loss divides by tau: normalise and compare in fp32
    if not normalize:  # `PretrainModel` normalises itself and also uses the raw projection
      return z
    return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class SegmentationHead(nn.Module):
  """1x1 conv to class logits (fp32 out, so the cross-entropy is computed in fp32)."""
  num_classes: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, f):
    logits = conv(self.num_classes, (1, 1), self.conv_impl, self.dtype,
                  self.param_dtype)(f)
    return logits.astype(jnp.float32)


class ReconstructionHead(nn.Module):
  """Per-pixel prediction of the normalised input, all dates x bands ([B, H, W, T * C]),
  for the masked objective. `hidden` 0 = one linear 1x1 conv: the features must then hold
  the input's signal linearly; > 0 adds a hidden layer (a freer, deeper decoder)."""
  out: int
  hidden: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, f):
    if self.hidden:
      f = nn.relu(conv(self.hidden, (1, 1), self.conv_impl, self.dtype, self.param_dtype)(f))
    y = conv(self.out, (1, 1), self.conv_impl, self.dtype, self.param_dtype)(f)
    return y.astype(jnp.float32)


class Prototypes(nn.Module):
  """Cosine scores [..., K] of L2-normalised embeddings against K learnable prototypes
  (themselves L2-normalised), for the cross-instance prototype objective."""
  num: int

  @nn.compact
  def __call__(self, z):
    c = self.param("prototypes", nn.initializers.normal(1.0), (self.num, z.shape[-1]),
                   jnp.float32)
    c = c / jnp.sqrt(jnp.sum(c * c, axis=-1, keepdims=True) + 1e-12)
    return jnp.einsum("...e,ke->...k", z.astype(jnp.float32), c)
