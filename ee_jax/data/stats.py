"""Streaming per-band statistics (float64, numerically stable merge of chunk moments)."""

import numpy as np


class BandStats:
  """Per-band mean and std over many chunks of pixels, without holding them in memory.

  Each chunk's mean and sum of squared deviations are merged with Chan et al.'s pairwise
  update, which stays accurate where `E[x^2] - E[x]^2` would cancel catastrophically.
  """

  def __init__(self, num_bands: int):
    self.count = 0
    self.mean = np.zeros(num_bands, np.float64)
    self.m2 = np.zeros(num_bands, np.float64)

  def update(self, pixels: np.ndarray) -> None:
    """Adds `pixels` shaped [N, num_bands] (only the pixels that should count)."""
    n = pixels.shape[0]
    if n == 0:
      return
    x = pixels.astype(np.float64)
    chunk_mean = x.mean(axis=0)
    chunk_m2 = ((x - chunk_mean) ** 2).sum(axis=0)
    total = self.count + n
    delta = chunk_mean - self.mean
    self.mean = self.mean + delta * (n / total)
    self.m2 = self.m2 + chunk_m2 + delta ** 2 * (self.count * n / total)
    self.count = total

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))
