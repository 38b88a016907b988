"""`sustainbench_crops`: Ghana or South Sudan crop types (`params.country`), S2 series.

Layout under `manual_dir` (SustainBench's crop type mapping task): `<country>/` holds
`list_eval_partition.csv` (id, partition: 0 train, 1 validation, 2 test),
`npy/<country>_<id:06d>.npz` (arrays `s1`, `s2`, `planet`, each C x 64 x 64 x T),
`truth/<country>_<id:06d>.npz` (`truth` 64 x 64) and `s2/s2_<country>_<id:06d>.json`
(`{"dates": ["YYYY-MM-DD", ...]}`). Only the S2 series is read (10 bands, B2 .. B12).

Classes 1..4 become 0..3 (Ghana: groundnut, maize, rice, soya bean; South Sudan: sorghum,
maize, rice, groundnut); 0 (no label) and anything above 4 become 255. Dates are sorted.
The series lengths differ between samples, so T is the longest series of the country's
date files (`num_dates=0`), shorter ones padded with valid=False and date 0 (see
tfds_builders/benchmarks.py). The files carry no georeference: tiles get an empty CRS and
a 10 m pixel frame. Values that are negative or non-finite are unobserved (valid False).
The dataset ships no normalisation statistics; ours are in the metadata.
"""

import csv
import datetime
import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.errors import ConfigError, DataError
from tfds_builders import benchmarks as bm
from tfds_builders.common import TileBuilder

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
CLASS_NAMES = {"ghana": ["groundnut", "maize", "rice", "soya_bean"],
               "southsudan": ["sorghum", "maize", "rice", "groundnut"]}
SPLITS = ("train", "validation", "test")  # partitions 0, 1, 2
_GSD = 10.0


def _yyyymmdd(text: str) -> int:
  return int(datetime.date.fromisoformat(text.strip()).strftime("%Y%m%d"))


class SustainbenchCrops(TileBuilder):
  """Ghana / South Sudan crop-type tiles in the tile contract (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  LABELLED = True
  DEFAULT_PARAMS = dict(
      manual_dir="",      # the downloaded folder (holds <country>/list_eval_partition.csv)
      country="ghana",    # 'ghana' | 'southsudan'
      num_dates=0,        # 0: the longest S2 series of the country; else pad to this
  )

  def _validate_params(self):
    if self.params["country"] not in CLASS_NAMES:
      raise ConfigError(f"data.builder.country ({self.name}): '{self.params['country']}' is "
                        f"not one of {sorted(CLASS_NAMES)}")
    bm.check_int(self.params, "num_dates", 0, self.name)

  def _dir(self) -> str:
    return os.path.join(bm.manual_root(self.params, self.name), self.params["country"])

  def _paths(self, sid: int) -> dict:
    d, c = self._dir(), self.params["country"]
    return {"npz": os.path.join(d, "npy", f"{c}_{sid:06d}.npz"),
            "truth": os.path.join(d, "truth", f"{c}_{sid:06d}.npz"),
            "dates": os.path.join(d, "s2", f"s2_{c}_{sid:06d}.json")}

  def _samples(self) -> list[tuple[int, int]]:
    """(id, partition) rows of list_eval_partition.csv (a header row is skipped)."""
    if getattr(self, "_sample_cache", None) is None:
      path = bm.need(os.path.join(self._dir(), "list_eval_partition.csv"), self.name)
      rows = []
      with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
          if not row or (i == 0 and not row[0].strip().isdigit()):
            continue
          try:
            sid, part = int(row[0]), int(row[1])
          except (ValueError, IndexError) as e:
            raise DataError(f"{path}: line {i + 1}: expected 'id,partition', got {row}") from e
          if part not in (0, 1, 2):
            raise DataError(f"{path}: line {i + 1}: partition {part} is not 0, 1 or 2")
          rows.append((sid, part))
      if not rows:
        raise DataError(f"{path}: no samples")
      self._sample_cache = rows
    return self._sample_cache

  def _dates(self, sid: int) -> list[int]:
    return _read_dates(bm.need(self._paths(sid)["dates"], self.name))

  def _num_dates(self) -> int:
    if getattr(self, "_t_cache", None) is None:
      n = self.params["num_dates"]
      self._t_cache = n or max(len(self._dates(sid)) for sid, _ in self._samples())
    return self._t_cache

  # --- TileBuilder interface -------------------------------------------------------------
  def _split_names(self):
    return list(SPLITS)

  def _tile_layout(self):
    return dict(num_dates=self._num_dates(), tile_size=64, bands=BANDS, gsd=_GSD,
                class_names=CLASS_NAMES[self.params["country"]])

  def _split_generators(self, dl_manager):
    bm.first_missing([p for sid, _ in self._samples() for p in self._paths(sid).values()],
                     self.name)
    return super()._split_generators(dl_manager)

  def _tiles(self, split) -> Iterator[tuple[str, dict]]:
    part, t_n = SPLITS.index(split), self._num_dates()
    for sid, p in self._samples():
      if p == part:
        yield _sample_example(sid, self._paths(sid), t_n, self.params["country"])

  # --- Beam (tfds_builders/beam_tiles.py): a unit is a sample ----------------------------
  def _beam_units(self):
    return [(sid, SPLITS[p], self._paths(sid)) for sid, p in self._samples()]

  def _beam_context(self):
    return dict(num_dates=self._num_dates())

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    sid, split, paths = unit
    if split in splits:
      key, example = _sample_example(sid, paths, context["num_dates"], params["country"])
      yield split, key, example

  @classmethod
  def _describe_unit(cls, unit):
    sid, _, paths = unit
    return f"sample {sid} ({paths['npz']}, {paths['truth']}, {paths['dates']})"

  def _extra_metadata(self):
    return {"country": self.params["country"],
            "labels": "raw classes 1..4 -> 0..3; 0 and > 4 -> ignore_index",
            "georeference": "none in the files: empty crs, 10 m pixel frame"}

  def _describe_sources(self):
    return self._dir()


def _read_dates(path: str) -> list[int]:
  try:
    with open(path) as f:
      return [_yyyymmdd(d) for d in json.load(f)["dates"]]
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f"{path}: expected {{\"dates\": [\"YYYY-MM-DD\", ...]}} ({e})") from e


def _sample_example(sid: int, paths: dict, num_dates: int, country: str) -> tuple[str, dict]:
  """(key, example) of one sample, its series sorted and padded to `num_dates`. Shared by
  the plain build and a Beam worker."""
  image, valid, label = _read_sample(paths)
  dates = np.asarray(_read_dates(paths["dates"]), np.int32)
  if len(dates) != image.shape[0]:
    raise DataError(f"{paths['dates']}: {len(dates)} dates, but {paths['npz']} has "
                    f"{image.shape[0]} S2 steps")
  image, valid, dates = bm.sort_by_date(image, valid, dates)
  image, valid, dates = bm.pad_series(image, valid, dates, num_dates, paths["npz"])
  return str(sid), {
      contract.IMAGE: image, contract.VALID: valid, contract.DATES: dates,
      contract.LABEL: label, contract.CRS: "",
      contract.TRANSFORM: np.array([0.0, _GSD, 0.0, 0.0, 0.0, -_GSD], np.float64),
      contract.SCENE_ID: f"{country}_{sid:06d}",
      contract.ROW: np.int32(0), contract.COL: np.int32(0),
  }


def _read_sample(paths: dict):
  """One sample's S2 series [T,H,W,C] uint16, valid [T,H,W] and label [H,W]."""
  try:
    with np.load(paths["npz"], allow_pickle=False) as z:
      s2 = z["s2"]
    with np.load(paths["truth"], allow_pickle=False) as z:
      truth = z["truth"]
  except KeyError as e:
    raise DataError(f"{paths['npz']} / {paths['truth']}: no array {e}") from e
  except (OSError, ValueError) as e:
    raise DataError(f"{paths['npz']} / {paths['truth']}: unreadable ({e})") from e
  if s2.ndim != 4 or s2.shape[0] != len(BANDS) or s2.shape[1:3] != (64, 64):
    raise DataError(f"{paths['npz']}: s2 has shape {s2.shape}, expected "
                    f"[{len(BANDS)}, 64, 64, T]")
  if truth.shape != (64, 64):
    raise DataError(f"{paths['truth']}: truth has shape {truth.shape}, expected [64, 64]")
  image, ok = bm.to_dn(np.transpose(s2, (3, 1, 2, 0)))  # C,H,W,T -> T,H,W,C
  label = np.full(truth.shape, contract.IGNORE_INDEX, np.uint8)
  known = (truth >= 1) & (truth <= 4)
  label[known] = (truth[known] - 1).astype(np.uint8)
  return image, ok.all(axis=-1), label
