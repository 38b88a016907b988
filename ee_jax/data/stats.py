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
    self._merge(n, chunk_mean, ((x - chunk_mean) ** 2).sum(axis=0))

  def merge(self, other: "BandStats") -> "BandStats":
    """Adds another accumulator's pixels (a Beam worker's share); returns self."""
    if other.count:
      self._merge(other.count, other.mean, other.m2)
    return self

  def _merge(self, n, mean, m2) -> None:
    total = self.count + n
    delta = mean - self.mean
    self.mean = self.mean + delta * (n / total)
    self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
    self.count = total

  def as_dict(self) -> dict:
    """Exact float64 moments as JSON-able lists (Python floats round-trip exactly)."""
    return {"count": int(self.count), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

  @classmethod
  def from_dict(cls, d: dict) -> "BandStats":
    stats = cls(len(d["mean"]))
    stats.count = int(d["count"])
    stats.mean = np.asarray(d["mean"], np.float64)
    stats.m2 = np.asarray(d["m2"], np.float64)
    return stats

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))
