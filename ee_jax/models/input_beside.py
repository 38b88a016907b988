"""The normalised input beside the learnt features, for the segmentation head.

Why: with few labels the classifier a practitioner fits on the raw pixels (and their 3x3
mean) is hard to beat, and a backbone's features may drop spectral directions that carry
class evidence (docs/pretraining.md). Giving the head the input itself beside the features
means a fine-tuned model starts from at least what that classifier sees, for both the
pre-trained and the random arm; the backbone only has to add to it.

`config.model.head_input`: '' (features alone), 'raw' (+ every date's normalised bands) or
'raw3x3' (+ those bands and their 3x3 mean, edges replicated: the classical baselines'
per-pixel features, ee_jax/baselines/features.py).
"""

import jax.numpy as jnp

from ee_jax.errors import ConfigError

HEAD_INPUTS = ("", "raw", "raw3x3")


def check(mode: str) -> str:
  if mode not in HEAD_INPUTS:
    raise ConfigError(f"config.model.head_input: unknown '{mode}'; known: "
                      f"{list(HEAD_INPUTS)} ('' = the features alone)")
  return mode


def mean3x3(x):
  """Mean over each pixel's 3x3 neighbourhood of x [B, H, W, D], edges replicated."""
  h, w = x.shape[1], x.shape[2]
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def input_channels(x, mode: str):
  """[B, H, W, k * T * C] from the model's input x [B, T, H, W, C] (normalised, nodata at
  0), dates x bands as channels; None for ''."""
  if not check(mode):
    return None
  b, t, h, w, c = x.shape
  raw = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h, w, t * c).astype(jnp.float32)
  return raw if mode == "raw" else jnp.concatenate([raw, mean3x3(raw)], axis=-1)
