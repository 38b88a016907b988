"""Label fractions: which train tiles keep their labels (docs/design.md, "Fine-tuning").

A fraction `f` of N train tiles is the first `subset_size(N, f) = max(1, ceil(f * N))` tiles
of one seeded ordering of all N tiles. Subsets are prefixes of the same ordering, so for one
seed they are NESTED: the 1/16 subset is inside the 1/4 subset, which is inside the 1/2 one.
The paper's fractions are 2^-k (`FRACTIONS`: 1, 1/2, ..., 1/128), but any f in (0, 1] is
accepted (nesting holds for any two fractions); anything else is a ConfigError.

Orderings (`tile_order`):

* random (default): a permutation of the N tiles seeded by `seed` alone;
* class-balanced: a greedy ordering from per-tile class pixel histograms (`class_histograms`:
  each train tile's label read once on host). With C the class pixel counts of the tiles
  chosen so far, the next tile is the one that most increases `sum_c log(1 + C_c)`, i.e. the
  geometric mean of the class pixel counts, which is largest when the classes are equally
  represented. Its gain `sum_c log1p(h_c / (1 + C_c))` is large for a tile that brings a class
  not yet seen (the first pixels of a class are worth the most), and shrinks for a class as
  it accumulates, so the rarest classes are covered first, then the counts are evened out
  without one rare class monopolising the ordering. Ties (e.g. identical histograms) go to
  the tile earliest in the seeded random order, so different seeds give different balanced
  subsets. Cost: O(N * K) per pick, O(count * N * K) for a subset (about 1 s for N = 4000,
  K = 10); tiles with no labelled pixel come last. Gains are rounded to 2^-32 before the
  comparison so that different CPUs (whose log1p may differ in the last bit) pick the same
  tiles. Still, multi-process runs may prefer computing the selection on process 0.

`write_selection` records the chosen tiles in `<workdir>/label_fraction.json`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ee_jax import storage
from ee_jax.data import contract, pipeline
from ee_jax.errors import ConfigError, DataError

FRACTIONS = tuple(2.0 ** -k for k in range(8))  # 1, 1/2, ..., 1/128
SELECTION_FILE = "label_fraction.json"
_SALT = 0x1ABE1F  # decorrelates the tile order from the pipeline's epoch permutations
_GAIN_QUANTUM = 2.0 ** 32


def check_fraction(fraction) -> float:
  """`fraction` as a float in (0, 1], else a ConfigError."""
  try:
    f = float(fraction)
  except (TypeError, ValueError):
    raise ConfigError(f"label fraction must be a number in (0, 1] (e.g. 2^-k: 1, 0.5, "
                      f"..., 0.0078125), got {fraction!r}") from None
  if not (0.0 < f <= 1.0) or math.isnan(f):
    raise ConfigError(f"label fraction must be in (0, 1] (e.g. 2^-k: 1, 0.5, ..., "
                      f"0.0078125), got {fraction!r}")
  return f


def subset_size(num_tiles: int, fraction) -> int:
  """Tiles in fraction `fraction` of `num_tiles`: `max(1, ceil(fraction * num_tiles))`
  (a hair of tolerance so that e.g. 0.3 * 10 is 3, not 4)."""
  f = check_fraction(fraction)
  n = int(num_tiles)
  if n < 1:
    raise ConfigError(f"cannot take a label fraction of {n} tiles")
  return min(n, max(1, math.ceil(f * n - 1e-9)))


def _rng_order(num_tiles: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng([_SALT, int(seed) & 0xFFFFFFFF])
  return rng.permutation(num_tiles).astype(np.int64)


def check_histograms(histograms) -> np.ndarray:
  """[N, K] non-negative integer pixel counts as int64."""
  h = np.asarray(histograms)
  if h.ndim != 2 or h.shape[0] < 1 or h.shape[1] < 1:
    raise ConfigError(f"class histograms must be [num_tiles, num_classes], got shape {h.shape}")
  if not np.issubdtype(h.dtype, np.integer) and not np.all(h == np.round(h)):
    raise ConfigError("class histograms must hold integer pixel counts")
  h = h.astype(np.int64)
  if (h < 0).any():
    raise ConfigError("class histograms must not be negative")
  return h


def _balanced_order(hist: np.ndarray, seed: int, count: int) -> np.ndarray:
  """The first `count` tiles of the greedy class-balanced ordering (see module docstring)."""
  n, _ = hist.shape
  shuffled = _rng_order(n, seed)  # tie-break: earliest here wins (argmax takes the first)
  h = hist[shuffled].astype(np.float64)
  covered = np.zeros(h.shape[1], np.float64)
  taken = np.zeros(n, bool)
  order = np.empty(count, np.int64)
  for i in range(count):
    gain = np.round(np.log1p(h / (covered + 1.0)).sum(axis=1) * _GAIN_QUANTUM)
    gain[taken] = -1.0
    best = int(np.argmax(gain))
    order[i] = shuffled[best]
    taken[best] = True
    covered += h[best]
  return order


def tile_order(tiles, seed: int, class_balanced: bool = False,
               count: int | None = None) -> np.ndarray:
  """The first `count` (default all) tiles of the seeded ordering fractions are prefixes of.

  `tiles`: the number of train tiles N, or their class histograms [N, K] (needed for
  `class_balanced`, see `class_histograms`).
  """
  if isinstance(tiles, (int, np.integer)):
    if class_balanced:
      raise ConfigError("a class-balanced label fraction needs the tiles' class histograms "
                        "(label_fractions.class_histograms), not just their number")
    n, hist = int(tiles), None
    if n < 1:
      raise ConfigError(f"cannot order {n} tiles")
  else:
    hist = check_histograms(tiles)
    n = hist.shape[0]
  count = n if count is None else int(count)
  if not 0 <= count <= n:
    raise ConfigError(f"count {count} is not in [0, {n}]")
  if class_balanced:
    return _balanced_order(hist, seed, count)
  return _rng_order(n, seed)[:count]


def fraction_indices(tiles, fraction, seed: int, class_balanced: bool = False) -> np.ndarray:
  """Train tile indices (sorted int64) of label fraction `fraction` for `seed`.

  `tiles`: the number of train tiles N, or their class histograms [N, K] (required for
  `class_balanced`). Nested: for one seed (and the same `class_balanced`), a smaller fraction
  gives a subset of a larger one's tiles. Fraction 1 is every tile.
  """
  n = int(tiles) if isinstance(tiles, (int, np.integer)) else np.shape(tiles)[0]
  count = subset_size(n, fraction)
  if count == n:  # every tile, whatever the order (still validates the arguments)
    tile_order(tiles, seed, class_balanced, 0)
    return np.arange(n, dtype=np.int64)
  return np.sort(tile_order(tiles, seed, class_balanced, count))


# --------------------------------------------------------------------------------------
# Reading a prepared dataset.
# --------------------------------------------------------------------------------------
def _label_meta(builder, num_classes, ignore_index) -> tuple[int, int | None]:
  meta = builder.info.metadata or {}
  if num_classes is None:
    names = meta.get(contract.META_CLASS_NAMES)
    if not names:
      raise DataError(f"{builder.data_dir}: no class names in the dataset metadata; pass "
                      f"num_classes")
    num_classes = len(names)
  if ignore_index is None:
    ignore_index = meta.get(contract.META_IGNORE_INDEX, contract.IGNORE_INDEX)
  return int(num_classes), (None if ignore_index is None else int(ignore_index))


def class_histograms(dataset, split: str = "train", num_classes: int | None = None,
                     ignore_index: int | None = None, *, batch_size: int = 64,
                     num_threads: int = pipeline.DEFAULT_NUM_THREADS) -> np.ndarray:
  """Per-tile class pixel counts int64 [N, K] of `split`, reading each tile's label once.

  `dataset`: a prepared `DatasetBuilder` or its folder. `num_classes` / `ignore_index`
  default to the dataset metadata (`class_names`, `ignore_index`). Pixels equal to
  `ignore_index` are not counted; any other label outside [0, K) is a DataError.
  """
  builder = pipeline.open_builder(dataset)
  if contract.LABEL not in builder.info.features:
    raise DataError(f"{builder.data_dir}: unlabelled dataset (no '{contract.LABEL}' feature); "
                    f"label fractions need labelled train tiles")
  k, ignore = _label_meta(builder, num_classes, ignore_index)
  n = builder.info.splits[split].num_examples if split in builder.info.splits else None
  out = np.zeros((n or 0, k), np.int64)
  with pipeline.eval_iterator(builder, split, per_device_batch=int(batch_size),
                              keys=(contract.LABEL,), num_threads=num_threads, process_index=0,
                              process_count=1, local_devices=1) as it:
    for batch in it:
      mask = batch[pipeline.MASK][0]
      index = batch[pipeline.INDEX][0][mask]
      label = batch[contract.LABEL][0][mask].reshape(len(index), -1).astype(np.int64)
      counted = label != ignore if ignore is not None else np.ones(label.shape, bool)
      bad = counted & ((label < 0) | (label >= k))
      if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        value = int(label[row][bad[row]][0])
        raise DataError(f"{builder.data_dir}, split '{split}': tile {int(index[row])} has "
                        f"label value {value}, not a class in [0, {k}) nor the ignore "
                        f"value {ignore}")
      flat = (np.arange(len(index))[:, None] * k + label)[counted]
      out[index] = np.bincount(flat, minlength=len(index) * k).reshape(len(index), k)
  return out


def tile_ids(dataset, split: str, indices) -> list[dict[str, Any]]:
  """[{index, scene_id, row, col}] of tiles `indices` of `split` (reads only those records)."""
  indices = np.asarray(indices, np.int64).reshape(-1)
  keys = (contract.SCENE_ID, contract.ROW, contract.COL)
  batch = pipeline.read_examples(dataset, split, indices, keys)
  return [{"index": int(i), "scene_id": contract.as_text(s), "row": int(r), "col": int(c)}
          for i, s, r, c in zip(indices, batch[contract.SCENE_ID], batch[contract.ROW],
                                batch[contract.COL])]


# --------------------------------------------------------------------------------------
# The record in the workdir.
# --------------------------------------------------------------------------------------
def selection_path(workdir) -> str:
  return os.path.join(os.fspath(workdir), SELECTION_FILE)


def read_selection(workdir) -> dict[str, Any] | None:
  """The recorded selection of `workdir`, or None if there is none."""
  path = selection_path(workdir)
  if not storage.exists(path):
    return None
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable label-fraction record: {e}") from e


def write_selection(workdir, indices, meta: Mapping[str, Any] | None = None, *,
                    tiles: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> str:
  """Writes `<workdir>/label_fraction.json`; returns its path.

  The record holds `meta` (e.g. fraction, seed, class_balanced, split, split_size), then
  `count` and the sorted `indices`, and `tiles` if given (`tile_ids`: scene_id/row/col of
  each chosen tile). A workdir already recording different indices (a resumed run with another
  fraction or seed) is a ConfigError unless `overwrite`.
  """
  indices = np.sort(np.asarray(indices, np.int64).reshape(-1))
  record = dict(meta or {})
  record.update(count=int(len(indices)), indices=indices.tolist())
  if tiles is not None:
    tiles = sorted((dict(t) for t in tiles), key=lambda t: int(t["index"]))
    if [int(t["index"]) for t in tiles] != record["indices"]:
      raise ValueError("`tiles` must describe exactly the selected indices")
    record["tiles"] = tiles
  path = selection_path(workdir)
  previous = read_selection(workdir)
  if previous is not None and not overwrite and previous.get("indices") != record["indices"]:
    raise ConfigError(
        f"{path} records a different selection of train tiles (fraction "
        f"{previous.get('fraction')}, seed {previous.get('seed')}, {previous.get('count')} "
        f"tiles) than this run's (fraction {record.get('fraction')}, seed "
        f"{record.get('seed')}, {record['count']} tiles); use a new workdir")
  if storage.is_remote(path):   # one object, whole once uploaded
    storage.makedirs(workdir)
    storage.write_text(path, json.dumps(record, indent=1))
    return path
  os.makedirs(os.fspath(workdir), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)
  return path
