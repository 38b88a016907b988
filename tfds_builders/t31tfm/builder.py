"""`t31tfm`: the T31TFM_1618 dataset (Sentinel-2 tile 31TFM, 2016-2018; DeepSatData format).

Layout under `manual_dir`: one pickle per sample, listed per split in text files
(`split_lists`, default `paths/{train,eval,test}_paths.csv`, one path per line, relative to
`manual_dir` or absolute; the first column if a line has several), and `classes.txt`
(`id|name` per line) unless `params.classes` gives the class map. A sample is a dict of
per-band arrays (`B01` ... `B12`, `B8A`; [T, h, w] at the band's native resolution),
`doy` [T], `year` (scalar or [T]), `labels` ([H, W] or [T, H, W] on the 10 m grid) and
`ids`. Pickles are read only through `safe_pickle.ArrayUnpickler`, never `pickle.load`.

Bands are put on the 10 m grid of `labels` by nearest-neighbour repetition (20 m x2,
60 m x6), which keeps every DN as measured. Steps with doy 0 (padding) are dropped, the
series sorted, then padded to `num_dates` with valid=False and date 0 (0: the longest
series, found by reading every pickle once: set it to skip that pass). Raw label ids not
in the class map become 255. The pickles carry no georeference (empty CRS, 10 m pixel
frame).
"""

import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.errors import ConfigError, DataError
from tfds_builders import benchmarks as bm
from tfds_builders.common import TileBuilder
from tfds_builders.t31tfm.safe_pickle import load_arrays

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
         "B11", "B12"]
_GSD = 10.0


class T31tfm(TileBuilder):
  """T31TFM_1618 samples in the tile contract (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  LABELLED = True
  DEFAULT_PARAMS = dict(
      manual_dir="",
      split_lists={"train": "paths/train_paths.csv", "validation": "paths/eval_paths.csv",
                   "test": "paths/test_paths.csv"},
      bands=tuple(BANDS),   # keys read from each sample, in this order
      classes=(),           # ([name, raw id or [raw ids]], ...); () = classes.txt
      num_dates=0,          # 0: the longest series (reads every pickle once)
  )

  def _validate_params(self):
    p = self.params
    bm.check_int(p, "num_dates", 0, self.name)
    if not isinstance(p["split_lists"], dict) or "train" not in p["split_lists"]:
      raise ConfigError(f"data.builder.split_lists ({self.name}): a mapping split -> list "
                        f"file that includes 'train', got {p['split_lists']!r}")
    if not p["bands"] or len(set(p["bands"])) != len(p["bands"]):
      raise ConfigError(f"data.builder.bands ({self.name}): distinct band keys, got "
                        f"{p['bands']!r}")
    for i, c in enumerate(p["classes"]):
      if len(c) != 2 or not isinstance(c[0], str):
        raise ConfigError(f"data.builder.classes[{i}] ({self.name}): [name, raw id(s)], "
                          f"got {c!r}")

  def _root(self) -> str:
    return bm.manual_root(self.params, self.name)

  def _class_map(self) -> list[tuple[str, list[int]]]:
    if self.params["classes"]:
      return [(n, [int(v) for v in np.atleast_1d(r)]) for n, r in self.params["classes"]]
    path = bm.need(os.path.join(self._root(), "classes.txt"), self.name)
    out = []
    with open(path) as f:
      for i, line in enumerate(f):
        if not line.strip():
          continue
        try:
          cid, name = line.strip().split("|", 1)
          out.append((name.strip(), [int(cid)]))
        except ValueError as e:
          raise DataError(f"{path}: line {i + 1}: expected 'id|name', got {line!r}") from e
    if not out or len(out) > 255:
      raise DataError(f"{path}: expected 1..255 classes, got {len(out)}")
    return out

  def _split_files(self, split: str) -> list[str]:
    root = self._root()
    lst = bm.need(os.path.join(root, self.params["split_lists"][split]), self.name)
    with open(lst) as f:
      rel = [line.split(",")[0].strip() for line in f if line.strip()]
    return [p if os.path.isabs(p) else os.path.join(root, p) for p in rel]

  def _num_dates(self) -> int:
    if getattr(self, "_t_cache", None) is None:
      n = self.params["num_dates"]
      if not n:
        n = max(int((np.asarray(self._load(p)["doy"]) != 0).sum())
                for s in self.params["split_lists"] for p in self._split_files(s))
      self._t_cache = max(n, 1)
    return self._t_cache

  def _load(self, path: str) -> dict:
    sample = load_arrays(path)
    if not isinstance(sample, dict):
      raise DataError(f"{path}: expected a dict of arrays, got {type(sample).__name__}")
    for key in list(self.params["bands"]) + ["doy", "year", "labels"]:
      if key not in sample:
        raise DataError(f"{path}: no '{key}' in the sample (keys: {sorted(sample)})")
    return sample

  def _tile_size(self) -> int:
    if getattr(self, "_size_cache", None) is None:
      first = self._split_files("train")
      if not first:
        raise DataError(f"{self.name}: the train list {self.params['split_lists']['train']} "
                        f"is empty")
      self._size_cache = int(np.asarray(self._load(bm.need(first[0], self.name))["labels"])
                             .shape[-1])
    return self._size_cache

  # --- TileBuilder interface -------------------------------------------------------------
  def _split_names(self):
    return list(self.params["split_lists"])

  def _tile_layout(self):
    return dict(num_dates=self._num_dates(), tile_size=self._tile_size(),
                bands=list(self.params["bands"]), gsd=_GSD,
                class_names=[n for n, _ in self._class_map()])

  def _split_generators(self, dl_manager):
    bm.first_missing([p for s in self.params["split_lists"] for p in self._split_files(s)],
                     self.name)
    return super()._split_generators(dl_manager)

  def _tiles(self, split) -> Iterator[tuple[str, dict]]:
    lut = np.full(65536, contract.IGNORE_INDEX, np.uint8)
    for index, (_, raw) in enumerate(self._class_map()):
      lut[[r for r in raw if 0 <= r < 65536]] = index
    for path in self._split_files(split):
      image, valid, dates, labels = self._sample(path)
      image, valid, dates = bm.sort_by_date(image, valid, dates)
      image, valid, dates = bm.pad_series(image, valid, dates, self._num_dates(), path)
      raw = labels.astype(np.int64)
      label = np.where((raw >= 0) & (raw < 65536), lut[np.clip(raw, 0, 65535)],
                       contract.IGNORE_INDEX).astype(np.uint8)
      name = os.path.splitext(os.path.basename(path))[0]
      yield f"{split}/{name}", {
          contract.IMAGE: image, contract.VALID: valid, contract.DATES: dates,
          contract.LABEL: label, contract.CRS: "",
          contract.TRANSFORM: np.array([0.0, _GSD, 0.0, 0.0, 0.0, -_GSD], np.float64),
          contract.SCENE_ID: name, contract.ROW: np.int32(0), contract.COL: np.int32(0),
      }

  def _sample(self, path):
    """image [T,H,W,C] uint16 (doy-0 steps dropped), valid, dates [T], labels [H,W]."""
    sample = self._load(path)
    labels = np.asarray(sample["labels"])
    if labels.ndim == 3:
      labels = labels[0]  # constant in time
    size = self._tile_size()
    if labels.shape != (size, size):
      raise DataError(f"{path}: labels of shape {labels.shape}, expected ({size}, {size})")
    doy = np.asarray(sample["doy"]).astype(np.int64).reshape(-1)
    year = np.broadcast_to(np.asarray(sample["year"]).astype(np.int64).reshape(-1), doy.shape)
    keep = doy != 0
    bands = []
    for b in self.params["bands"]:
      arr = np.asarray(sample[b])
      if arr.ndim != 3 or arr.shape[0] != doy.shape[0]:
        raise DataError(f"{path}: band {b} has shape {arr.shape}, expected [T={doy.shape[0]}"
                        f", h, w]")
      bands.append(bm.upsample_to(arr[keep], (size, size), f"{path}: band {b}"))
    image, ok = bm.to_dn(np.stack(bands, axis=-1))
    dates = np.array([bm.doy_to_yyyymmdd(y, d) for y, d in zip(year[keep], doy[keep])],
                     np.int32)
    return image, ok.all(axis=-1), dates, labels

  def _extra_metadata(self):
    return {"classes": [[n, r] for n, r in self._class_map()],
            "resampling": "nearest (integer repetition) onto the 10 m grid of labels",
            "georeference": "none in the pickles: empty crs, 10 m pixel frame"}

  def _describe_sources(self):
    return self._root()
