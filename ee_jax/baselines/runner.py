"""One baseline run: the label fraction's tiles (the deep runs' own), their counted pixels
(at most MAX_PIXELS_PER_CLASS a class, sampled with the seed), a fit, and the test split
scored with the project's confusion matrix into <workdir>/eval.json (a deep run's fields).
With `embedding_from` (a checkpoint), its backbone's per-pixel embedding and the embedding's
3x3 mean go beside the per-pixel features (ee_jax/baselines/embedding.py): the same pixels
are sampled, so the run pairs exactly with the same classifier on the pixels alone.
"""

import json
import os

import numpy as np

from ee_jax import baselines, metrics, storage
from ee_jax.baselines import embedding, features

# Bounds a baseline's time and memory on large fractions: the pixels of a class beyond this
# are a seeded random sample of it.
MAX_PIXELS_PER_CLASS = 10000
# Pixels read and featurised at a time (whole tiles, at least one): 64 tiles of 32 x 32 px;
# bounds a chunk's features to 256 MiB at 1,000 features a pixel, whatever the tile size.
CHUNK_PIXELS = 65536
_SALT = 0xBA5E


def _chunks(indices, tile_pixels: int):
  size = max(1, CHUNK_PIXELS // max(1, tile_pixels))
  for i in range(0, len(indices), size):
    yield indices[i:i + size]


class _Data:
  """The dataset's tiles, normalisation and classes, as the random-init arm sees them."""

  def __init__(self, builder, uses_indices: bool, embed=None):
    from ee_jax.data import contract  # pylint: disable=import-outside-toplevel
    from ee_jax.train.pretrain import dataset_metadata  # pylint: disable=import-outside-toplevel
    meta = dataset_metadata(builder)
    info = builder.info.metadata
    self.builder, self.uses_indices, self.embed = builder, uses_indices, embed
    self.tile_pixels = int(info[contract.META_TILE_SIZE]) ** 2
    self.mean, self.std = np.asarray(meta["mean"]), np.asarray(meta["std"])
    self.bands = meta["bands"]
    self.class_names = list(info[contract.META_CLASS_NAMES])
    self.ignore = int(info[contract.META_IGNORE_INDEX])
    self.keys = (contract.IMAGE, contract.VALID, contract.LABEL)

  @property
  def k(self) -> int:
    return len(self.class_names)

  def tiles(self, split: str, indices):
    """(features [n, H, W, D], label, counted) per chunk of `indices` of `split`."""
    from ee_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    for chunk in _chunks(np.asarray(indices, np.int64), self.tile_pixels):
      b = pipeline.read_examples(self.builder, split, chunk, self.keys)
      image, valid, label = (b[key] for key in self.keys)
      f = features.pixel_features(image, valid, self.mean, self.std, self.bands,
                                  indices=self.uses_indices)
      if self.embed is not None:
        f = embedding.beside_pixels(self.embed(image, valid), f)
      yield f, label, features.counted(label, valid, self.k, self.ignore)


def _cap(x, y, priority, cap: int):
  """The rows of the `cap` smallest priorities of each class, in their order."""
  order = np.lexsort((priority, y))                 # by class, then priority
  y_sorted = y[order]
  rank = np.arange(len(order)) - np.searchsorted(y_sorted, y_sorted)
  chosen = np.sort(order[rank < cap])
  return x[chosen], y[chosen], priority[chosen]


def sample_pixels(chunks, seed: int, cap: int = MAX_PIXELS_PER_CLASS):
  """(x [n, D], y [n]) of the counted pixels of `chunks`, at most `cap` a class: those
  with the smallest seeded random priorities, kept chunk by chunk (bounded memory)."""
  rng = np.random.default_rng([_SALT, int(seed) & 0xFFFFFFFF])
  x = y = p = None
  for f, label, keep in chunks:
    new = (f[keep], np.asarray(label)[keep].astype(np.int32))
    new += (rng.random(len(new[1])),)
    x, y, p = new if x is None else (np.concatenate([x, new[0]]), np.concatenate([y, new[1]]),
                                     np.concatenate([p, new[2]]))
    x, y, p = _cap(x, y, p, cap)
  return (np.zeros((0, 0), np.float32), np.zeros(0, np.int32)) if x is None else (x, y)


def confusion(predict, chunks, num_classes: int, ignore_index: int) -> np.ndarray:
  """int64 [K, K] of `predict` over `chunks`' counted pixels, with the deep runs' code."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  for f, label, keep in chunks:
    pred = predict(f.reshape(-1, f.shape[-1])).reshape(np.shape(label))
    cm += np.asarray(metrics.confusion_matrix(pred, label, keep, num_classes, ignore_index),
                     np.int64)
  return cm


def run_baseline(config, name: str, workdir: str, cap: int = MAX_PIXELS_PER_CLASS,
                 embedding_from: str = "", embed=None) -> dict:
  """Baseline `name` on the tiles the fine-tuning config `config` trains on (its
  label_fraction, fraction_seed; selection recorded in <workdir>/label_fraction.json),
  scored on config.finetune.test_split; writes and returns <workdir>/eval.json.
  `embedding_from`: a checkpoint whose backbone's embedding goes beside the features;
  `embed`: its embedder when the caller built it already (embedding.from_checkpoint; a study
  reuses one for all its runs instead of loading and compiling it again each time)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ee_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from ee_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  from ee_jax.train import finetune  # pylint: disable=import-outside-toplevel
  classifier = baselines.get(name)
  storage.makedirs(workdir)
  builder = distributed.primary_first(
      lambda: datasets.prepare(config.data, log=lambda *a: None), "prepare")
  if embedding_from:
    embed = embed or embedding.from_checkpoint(embedding_from, builder.info.metadata["bands"],
                                               str(builder.data_dir))
  else:
    embed = None  # `embed` only ever comes with the checkpoint eval.json names
  data = _Data(builder, classifier.USES_INDICES, embed)
  train_split = config.data.train_split
  indices = finetune.select_tiles(config, builder, workdir, data.k, data.ignore)
  if indices is None:
    indices = np.arange(builder.info.splits[train_split].num_examples)
  seed = int(config.finetune.fraction_seed)
  x, y = sample_pixels(data.tiles(train_split, indices), seed, cap)
  split = config.finetune.test_split
  num_test = builder.info.splits[split].num_examples
  if len(y):
    predict = classifier.fit(x, y, data.k, seed)
    cm = confusion(predict, data.tiles(split, np.arange(num_test)), data.k, data.ignore)
    result = metrics.segmentation_scores(cm, data.class_names)
  else:  # nothing to fit: no score (the summary skips it), the study goes on
    distributed.log(f"{workdir}: no labelled, observed pixel in the {len(indices)} training "
                    f"tiles; no score")
    result = {"miou": None, "oa": None, "kappa": None,
              "per_class_iou": dict.fromkeys(data.class_names),
              "per_class_f1": dict.fromkeys(data.class_names)}
  result.update(
      split=split, num_examples=num_test, baseline=name,
      train_tiles=int(len(indices)), train_pixels=int(len(y)), max_pixels_per_class=cap,
      train_pixels_per_class=dict(zip(data.class_names,
                                      np.bincount(y, minlength=data.k).tolist())),
      num_features=int(x.shape[1]) if len(y) else None,
      indices=features.available_indices(data.bands) if classifier.USES_INDICES else [],
      embedding_from=embedding_from or None)
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, "eval.json"),  # never a half-written result
                       json.dumps(result, indent=2))
  return result
