"""PCA (for the 3-band preview) and k-means (for the unsupervised class map) in numpy.

Both are fitted on a seeded sample of valid pixels and then applied to every pixel, block by
block, so a scene of any size needs only the sample in memory.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Pca:
  mean: np.ndarray        # [D]
  components: np.ndarray  # [3, D], unit rows, largest variance first
  lo: np.ndarray          # [3] 2nd percentile of the sample's projections
  hi: np.ndarray          # [3] 98th percentile

  def rgb(self, x: np.ndarray) -> np.ndarray:
    """x [..., D] -> [..., 3] in [0, 1] (percentile stretch of the first 3 components)."""
    p = (x - self.mean) @ self.components.T
    return np.clip((p - self.lo) / np.maximum(self.hi - self.lo, 1e-12), 0.0, 1.0)


def fit_pca(samples: np.ndarray, n: int = 3) -> Pca:
  """Principal components of samples [N, D] (float64 covariance; deterministic signs)."""
  x = np.asarray(samples, np.float64)
  mean = x.mean(axis=0)
  cov = np.cov(x - mean, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1],) * 2)
  cov = np.atleast_2d(cov)
  vals, vecs = np.linalg.eigh(cov)
  comps = vecs[:, np.argsort(vals)[::-1][:n]].T                    # [n', D]
  # Sign: the largest-magnitude loading of each component is positive.
  signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
  comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
  if len(comps) < n:  # fewer features than components: pad with zeros (grey channels)
    comps = np.concatenate([comps, np.zeros((n - len(comps), x.shape[1]))])
  proj = (x - mean) @ comps.T
  lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
  return Pca(mean.astype(np.float32), comps.astype(np.float32), lo.astype(np.float32),
             hi.astype(np.float32))


def _sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """[N, k] squared Euclidean distances (clipped at 0 against rounding)."""
  d = (x * x).sum(axis=1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)
  return np.maximum(d, 0.0)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Nearest centroid of each row of x [N, D] (int)."""
  if not len(x):
    return np.zeros((0,), np.int64)
  return _sq_distances(np.asarray(x, np.float32), centroids).argmin(axis=1)


def kmeans(samples: np.ndarray, k: int, iters: int = 50, seed: int = 0,
           tol: float = 1e-6) -> np.ndarray:
  """Centroids [k, D] by k-means++ initialisation and Lloyd iterations (seeded).

  Clusters are ordered by decreasing size, so index 0 is the most common cluster of the
  sample; an empty cluster is re-seeded at the sample point farthest from its centroid.
  """
  x = np.asarray(samples, np.float32)
  n = len(x)
  if n < k:
    raise ValueError(f"k-means: {n} samples for {k} clusters")
  rng = np.random.default_rng(seed)
  centroids = np.empty((k, x.shape[1]), np.float32)
  centroids[0] = x[rng.integers(n)]
  d2 = _sq_distances(x, centroids[:1])[:, 0]
  for j in range(1, k):
    total = d2.sum()
    idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
    centroids[j] = x[idx]
    d2 = np.minimum(d2, _sq_distances(x, centroids[j:j + 1])[:, 0])
  labels = None
  for _ in range(iters):
    d = _sq_distances(x, centroids)
    new = d.argmin(axis=1)
    if labels is not None and np.array_equal(new, labels):
      break
    labels = new
    counts = np.bincount(labels, minlength=k)
    onehot = (labels[:, None] == np.arange(k)[None, :]).astype(np.float32)    # [N, k]
    sums = (x.T @ onehot).T   # [k, D]; this operand order is ~100x faster than onehot.T @ x
    moved = centroids.copy()
    nonempty = counts > 0
    moved[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    far = np.argsort(d[np.arange(n), labels])[::-1]
    for j, i in zip(np.flatnonzero(~nonempty), far):
      moved[j] = x[i]
    shift = float(np.abs(moved - centroids).max())
    centroids = moved
    if shift <= tol:
      break
  counts = np.bincount(assign(x, centroids), minlength=k)
  return centroids[np.argsort(-counts, kind="stable")]
