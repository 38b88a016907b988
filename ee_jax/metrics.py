"""Segmentation metrics (docs/design.md, "Evaluation"): confusion matrix on device, scores on host.

Usage in a pmapped eval step (per device; `parallel.AXIS` is the pmap axis)::

    cm = metrics.confusion_matrix(logits.argmax(-1), batch["label"], batch["mask"],
                                  num_classes, ignore_index)      # int32 [K, K]
    cm = metrics.psum_confusion(cm, parallel.AXIS)                # the global batch's

and on host, per batch: `total += np.asarray(cm[0], np.int64)` (after the psum every device
holds the same matrix), then `metrics.segmentation_scores(total, class_names)`.

Counting: a pixel counts when its example is real (`mask`, the eval iterator's padding flag,
or a per-pixel mask), its label is not `ignore_index` and both its label and its prediction
are in `[0, K)`. So padding examples and ignore pixels contribute nothing, and the psum of the
per-device matrices of a padded global batch is the matrix of its real examples, on any
number of devices.

Overflow: one call's cells are int32 (exact up to 2**31 - 1 pixels, e.g. 32k tiles of 256 x
256 in one global batch). Accumulate batches on host in int64, as above, rather than in an
int32 on-device running sum (a 100k-tile evaluation set of 256 x 256 tiles has 6.5e9 pixels).

Why `jnp.bincount` of `truth * K + pred` (the default, `method="bincount"`): it is one pass
over the pixels and exact integer counting. On CPU (2 cores, K = 10) it costs about 1 ns a
pixel: 1.6 ms for 16 x 256 x 256 pixels, against 30 ms for a one-hot matmul (the one-hots
are materialised) and 130 ms for a summed one-hot outer product. On GPU it is a scatter-add
into K*K + 1 bins (atomics); for any batch that fits the model it is far below the model's
forward pass, so it stays the default there too (not measured on a GPU). `method="matmul"`
computes `one_hot(truth).T @ one_hot(pred)` instead, the usual choice on TPUs where scatters
are slow; it accumulates in float32 at HIGHEST precision, exact while each call counts at most
2**24 pixels (checked statically).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_MATMUL_EXACT_PIXELS = 2 ** 24  # float32 integers are exact up to here


def _broadcast_mask(mask, shape: tuple[int, ...]):
  """`mask` aligned on the LEADING axes of `shape` ([B] per example, [B, H, W] per pixel)."""
  mask = jnp.asarray(mask, bool)
  if mask.ndim > len(shape):
    raise ValueError(f"mask has shape {mask.shape}, more axes than the labels {shape}")
  mask = mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
  return jnp.broadcast_to(mask, shape)


def confusion_matrix(pred, label, mask=None, num_classes: int | None = None,
                     ignore_index: int | None = 255, *, method: str = "bincount"):
  """Pixel confusion matrix int32 [K, K]: rows = truth (`label`), columns = prediction.

  `pred`, `label`: integer arrays of the same shape `[..., H, W]` (any leading axes).
  `mask`: None, or bool aligned on the leading axes of `label`: `[B]` per example (the eval
  iterator's padding mask), or `[B, H, W]` per pixel, or anything in between. Pixels with
  `mask` False, `label == ignore_index` (None: no ignore value), or a label or prediction
  outside `[0, num_classes)` are not counted. Jittable; per device (see `psum_confusion`).
  """
  if num_classes is None or int(num_classes) < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes}")
  k = int(num_classes)
  pred = jnp.asarray(pred)
  label = jnp.asarray(label)
  if pred.shape != label.shape:
    raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same shape")
  # int32 before any arithmetic: labels are often uint8 (255 * K would wrap).
  pred = pred.astype(jnp.int32)
  label = label.astype(jnp.int32)
  valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
  if ignore_index is not None:
    valid &= label != int(ignore_index)
  if mask is not None:
    valid &= _broadcast_mask(mask, label.shape)
  if method == "bincount":
    # Uncounted pixels go to an extra bin K*K, dropped afterwards.
    idx = jnp.where(valid, label * k + pred, k * k).reshape(-1)
    counts = jnp.bincount(idx, length=k * k + 1)[:k * k]
    return counts.reshape(k, k).astype(jnp.int32)
  if method == "matmul":
    n = math.prod(label.shape)
    if n > _MATMUL_EXACT_PIXELS:
      raise ValueError(f"method='matmul' counts exactly up to {_MATMUL_EXACT_PIXELS} pixels "
                       f"per call, got {n}; use method='bincount' or smaller batches")
    truth = jax.nn.one_hot(jnp.where(valid, label, -1).reshape(-1), k, dtype=jnp.float32)
    guess = jax.nn.one_hot(pred.reshape(-1), k, dtype=jnp.float32)
    counts = jnp.dot(truth.T, guess, precision=jax.lax.Precision.HIGHEST)
    return jnp.round(counts).astype(jnp.int32)
  raise ValueError(f"method must be 'bincount' or 'matmul', got {method!r}")


def psum_confusion(cm, axis_name):
  """Sum of the per-device confusion matrices over the pmap axis `axis_name` (use inside
  the mapped function; every device then holds the global matrix)."""
  return jax.lax.psum(cm, axis_name)


def _ratio(num: float, den: float) -> float | None:
  return float(num) / float(den) if den > 0 else None


def _kappa(cm: np.ndarray) -> float | None:
  """Cohen's kappa of an int64 confusion matrix; None when undefined (segmentation_scores)."""
  n = int(cm.sum())
  if n == 0:
    return None
  # Python ints: truth_k * pred_k reaches N^2, past int64 once N > 3e9 pixels.
  chance = int(sum(int(t) * int(p) for t, p in zip(cm.sum(axis=1), cm.sum(axis=0))))
  if chance == n * n:
    return None
  return (int(np.trace(cm)) * n - chance) / (n * n - chance)


def segmentation_scores(cm, class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Scores of a (host, summed) confusion matrix [K, K] (rows truth, columns prediction).

  Returns a JSON-ready dict (no NaN anywhere):

  * `miou`: mean of the per-class IoUs over the classes that occur (in truth or in
    prediction), in [0, 1]; None if no pixel was counted.
  * `oa`: overall pixel accuracy, trace / sum, in [0, 1]; None if no pixel was counted.
  * `per_class_iou`: {class name: TP / (TP + FP + FN)}, None for a class absent from both
    truth and prediction (TP + FP + FN == 0): such a class is excluded from `miou`, not
    counted as 0 or 1. A class present in truth but never predicted has IoU 0 and counts.
  * `kappa`: Cohen's kappa (po - pe) / (1 - pe), po = `oa`, pe = sum_k truth_k * pred_k /
    N^2 (chance agreement), in [-1, 1]; as the crop-type benchmarks report it. None if no
    pixel was counted or pe == 1 (one class everywhere in truth and prediction: 0 / 0).
  * `per_class_f1`: {class name: 2 TP / (2 TP + FP + FN)}, None for a class absent from
    both truth and prediction, as for IoU.
  * `per_class_pixels`: {class name: truth pixels}.
  * `confusion_matrix`: the matrix as a list of lists of ints; `num_pixels`: its sum;
    `class_names`: the names, in matrix order.

  `class_names` default to "0", "1", ...
  """
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be square [K, K], got shape {cm.shape}")
  if not np.issubdtype(cm.dtype, np.integer):
    if not np.all(cm == np.round(cm)):
      raise ValueError("confusion matrix must hold integer counts")
  cm = cm.astype(np.int64)
  if (cm < 0).any():
    raise ValueError("confusion matrix has negative counts (int32 overflow? accumulate in "
                     "int64 on host)")
  k = cm.shape[0]
  names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
  if len(names) != k:
    raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
  if len(set(names)) != k:
    raise ValueError(f"class names must be unique, got {names}")
  tp = np.diag(cm)
  truth = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  union = truth + predicted - tp  # TP + FN + FP
  ious = [_ratio(tp[c], union[c]) for c in range(k)]
  present = [v for v in ious if v is not None]
  total = int(cm.sum())
  f1s = [_ratio(2 * tp[c], union[c] + tp[c]) for c in range(k)]
  return {
      "miou": float(np.mean(present)) if present else None,
      "oa": _ratio(np.trace(cm), total),
      "kappa": _kappa(cm),
      "per_class_iou": dict(zip(names, ious)),
      "per_class_f1": dict(zip(names, f1s)),
      "per_class_pixels": {n: int(t) for n, t in zip(names, truth)},
      "confusion_matrix": cm.tolist(),
      "num_pixels": total,
      "class_names": names,
  }
