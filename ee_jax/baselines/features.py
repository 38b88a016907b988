"""Per-pixel features of the classical baselines (and of benchmarks/feature_probe.py).

Every date's bands normalised as the random-init arm normalises them (the dataset's
train-split mean/std; unobserved dates at 0, finetune.prepare_inputs), their 3x3 mean
(edges replicated), and for the trees a few normalised differences of the raw digital
numbers, per date, for the indices whose bands the dataset has. A pixel is trained on and
scored exactly where the deep runs' loss and evaluation count it (`counted`).
"""

import numpy as np

# name -> (a, b): (a - b) / (a + b). NDMI is -NDBI (both from B08/B11), so only NDBI.
INDICES = {"ndvi": ("B08", "B04"), "ndwi": ("B03", "B08"), "ndbi": ("B11", "B08")}


def raw_features(image, valid, mean, std):
  """Normalised input, dates x bands as channels [N, H, W, T*C]."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ee_jax.train.finetune import prepare_inputs  # pylint: disable=import-outside-toplevel
  x, _ = prepare_inputs(image, valid, mean, std)
  n, t, h, w, c = x.shape
  return np.asarray(jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(n, h, w, t * c))


def smoothed(features):
  """Mean over each pixel's 3x3 neighbourhood (edges replicated), [N, H, W, D]: what local
  averaging alone adds to the raw pixels, the least a learned representation should give."""
  n, h, w, _ = features.shape
  padded = np.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  return sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def available_indices(bands) -> list[str]:
  """The INDICES whose two bands are among `bands` (others are skipped)."""
  return [name for name, pair in INDICES.items() if all(b in list(bands) for b in pair)]


def normalised_differences(image, valid, bands, names):
  """[N, H, W, T * len(names)]: each index per date, 0 where unobserved or a + b == 0."""
  bands = list(bands)
  x = np.asarray(image, np.float32)
  out = []
  for name in names:
    a, b = (x[..., bands.index(band)] for band in INDICES[name])
    total = a + b
    out.append(np.where(np.asarray(valid) & (total > 0),
                        (a - b) / np.where(total > 0, total, 1.0), 0.0))
  d = np.stack(out, -1).astype(np.float32)             # [N, T, H, W, I]
  n, t, h, w, i = d.shape
  return np.transpose(d, (0, 2, 3, 1, 4)).reshape(n, h, w, t * i)


def pixel_features(image, valid, mean, std, bands, indices: bool = False):
  """[N, H, W, D]: normalised bands, their 3x3 mean and (`indices`) the available indices."""
  raw = raw_features(image, valid, mean, std)
  parts = [raw, smoothed(raw)]
  names = available_indices(bands) if indices else []
  if names:
    parts.append(normalised_differences(image, valid, bands, names))
  return np.concatenate(parts, -1).astype(np.float32)


def counted(label, valid, num_classes: int, ignore_index: int):
  """bool [N, H, W]: labelled (not ignore, a class) and observed on some date, as the deep
  runs' loss (finetune.pixel_weights) and evaluation (make_eval_step) count pixels."""
  label = np.asarray(label)
  return (label != ignore_index) & (label < num_classes) & np.asarray(valid).any(axis=1)
