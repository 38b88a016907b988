"""`mtlcc`: the MTLCC benchmark (Bavaria, 2016 and 2017) read from its downloaded folder.

Layout under `manual_dir`: `data_IJGI18/datasets/full/<size>/` (`size` 240 or 480 m
tiles: 24 or 48 pixels) holding `data16/` and `data17/` with one `<tileid>.tfrecord.gz`
per tile (whole-file gzip, one tf.train.Example), `tileids/train_fold<k>.tileids`,
`test_fold<k>.tileids`, `eval.tileids`, `classes.txt` (`id|name`) and `geotransforms.csv`
(tileid, xmin, xres, 0, ymax, 0, -yres, srid). Splits: train = train_fold<k>,
validation = test_fold<k>, test = eval (`fold` = k); each tile appears once per year.

Features `x10/data` [T,H,W,4], `x20/data` [T,H/2,W/2,6], `x60/data` [T,H/6,W/6,3],
`labels/data` [T,H,W], `dates/doy` (each `*/data` one raw little-endian int64 array in a
BytesList, its shape in `*/shape`). Both CRCs of every record are checked (tfrecord.py,
google-crc32c) and the Example decoded with TFDS's tf_example_pb2 (example.py): no
TensorFlow. 20 m and 60 m bands are repeated onto the 10 m grid; steps with doy 0 (padding)
are dropped, the rest sorted and padded at the end to the stored length T (valid=False, date
0), so T is that of the files. The year comes from the folder name (the year field is
unreliable). Labels are constant in time (the first step is used); raw ids named in
`ignore_names` (default 'unknown') or absent from classes.txt become 255, the others are
numbered in file order.
"""

import csv
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.errors import ConfigError, DataError
from tfds_builders import benchmarks as bm
from tfds_builders.common import TileBuilder
from tfds_builders.mtlcc.example import WireError, parse_example
from tfds_builders.mtlcc.tfrecord import read_records

X10 = ("B04", "B03", "B02", "B08")  # as DeepSatModels reads x10
X20 = ("B05", "B06", "B07", "B8A", "B11", "B12")
X60 = ("B01", "B09", "B10")
SPLITS = ("train", "validation", "test")
_GSD = 10.0


class Mtlcc(TileBuilder):
  """MTLCC tiles in the tile contract (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  LABELLED = True
  DEFAULT_PARAMS = dict(
      manual_dir="",          # the folder that holds data_IJGI18/
      size=240,               # tile size in metres: 240 (24 px) or 480 (48 px)
      fold=0,                 # tileids/train_fold<k> and test_fold<k>
      years=(16, 17),         # data16/, data17/
      bands_x10=X10, bands_x20=X20, bands_x60=X60,  # names of the stored band order
      ignore_names=("unknown",),
  )

  def _validate_params(self):
    p = self.params
    if p["size"] not in (240, 480):
      raise ConfigError(f"data.builder.size ({self.name}): 240 or 480, got {p['size']!r}")
    bm.check_int(p, "fold", 0, self.name)
    if not p["years"] or any(not isinstance(y, int) or not 0 <= y <= 99 for y in p["years"]):
      raise ConfigError(f"data.builder.years ({self.name}): two-digit years of the dataN "
                        f"folders, got {p['years']!r}")
    for key, n in (("bands_x10", 4), ("bands_x20", 6), ("bands_x60", 3)):
      if len(p[key]) != n:
        raise ConfigError(f"data.builder.{key} ({self.name}): {n} names, got {p[key]!r}")

  def _root(self) -> str:
    return os.path.join(bm.manual_root(self.params, self.name), "data_IJGI18", "datasets",
                        "full", str(self.params["size"]))

  def _bands(self) -> list[str]:
    p = self.params
    return list(p["bands_x10"]) + list(p["bands_x20"]) + list(p["bands_x60"])

  def _tileids(self, split: str) -> list[str]:
    k = self.params["fold"]
    name = {"train": f"train_fold{k}", "validation": f"test_fold{k}", "test": "eval"}[split]
    path = bm.need(os.path.join(self._root(), "tileids", f"{name}.tileids"), self.name)
    with open(path) as f:
      return [line.strip() for line in f if line.strip()]

  def _tile_path(self, year: int, tileid: str) -> str:
    return os.path.join(self._root(), f"data{year}", f"{tileid}.tfrecord.gz")

  def _classes(self) -> list[tuple[int, str]]:
    """(raw id, name) of the classes kept, in classes.txt order."""
    path = bm.need(os.path.join(self._root(), "classes.txt"), self.name)
    out = []
    with open(path) as f:
      for i, line in enumerate(f):
        if not line.strip():
          continue
        try:
          cid, name = line.strip().split("|", 1)
          cid = int(cid)
        except ValueError as e:
          raise DataError(f"{path}: line {i + 1}: expected 'id|name', got {line!r}") from e
        if name.strip() not in self.params["ignore_names"]:
          out.append((cid, name.strip()))
    if not out or len(out) > 255:
      raise DataError(f"{path}: expected 1..255 classes, got {len(out)}")
    return out

  def _geotransforms(self) -> dict:
    if getattr(self, "_geo_cache", None) is None:
      path = bm.need(os.path.join(self._root(), "geotransforms.csv"), self.name)
      geo = {}
      with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
          if not row or (i == 0 and not _is_number(row[1] if len(row) > 1 else "")):
            continue
          try:
            vals = [float(v) for v in row[1:7]]
            geo[row[0].strip()] = (vals, int(float(row[7])))
          except (ValueError, IndexError) as e:
            raise DataError(f"{path}: line {i + 1}: expected tileid, xmin, xres, 0, ymax, 0, "
                            f"-yres, srid; got {row}") from e
      self._geo_cache = geo
    return self._geo_cache

  def _num_dates(self) -> int:
    """The stored series length: the longest of the first train tile of each year."""
    if getattr(self, "_t_cache", None) is None:
      first = self._tileids("train")
      if not first:
        raise DataError(f"{self.name}: tileids/train_fold{self.params['fold']}.tileids is "
                        f"empty")
      self._t_cache = max(int(np.asarray(_read_tile(
          bm.need(self._tile_path(y, first[0]), self.name))["dates/doy"]).size)
          for y in self.params["years"])
    return self._t_cache

  # --- TileBuilder interface -------------------------------------------------------------
  def _split_names(self):
    return list(SPLITS)

  def _tile_layout(self):
    return dict(num_dates=self._num_dates(), tile_size=self.params["size"] // 10,
                bands=self._bands(), gsd=_GSD, class_names=[n for _, n in self._classes()])

  def _split_generators(self, dl_manager):
    self._geotransforms()
    bm.first_missing([self._tile_path(y, t) for s in SPLITS for t in self._tileids(s)
                      for y in self.params["years"]], self.name)
    return super()._split_generators(dl_manager)

  def _lut(self) -> np.ndarray:
    """Raw class id -> class index (255 where ignored or unknown)."""
    lut = np.full(65536, contract.IGNORE_INDEX, np.uint8)
    for index, (cid, _) in enumerate(self._classes()):
      if 0 <= cid < 65536:
        lut[cid] = index
    return lut

  def _units(self, splits):
    """(split, year, tileid, path, geotransform) of every tile-year of `splits`."""
    geo = self._geotransforms()
    out = []
    for split in splits:
      for tileid in self._tileids(split):
        if tileid not in geo:
          raise DataError(f"{os.path.join(self._root(), 'geotransforms.csv')}: no row for "
                          f"tile {tileid}")
        for year in self.params["years"]:
          out.append((split, year, tileid, self._tile_path(year, tileid), geo[tileid]))
    return out

  def _tiles(self, split) -> Iterator[tuple[str, dict]]:
    lut, size, t_n = self._lut(), self.params["size"] // 10, self._num_dates()
    for _, year, tileid, path, geo in self._units([split]):
      yield _tile_example(year, tileid, path, geo, size, t_n, lut)

  # --- Beam (tfds_builders/beam_tiles.py): a unit is a tile of one year ------------------
  def _beam_units(self):
    return self._units(SPLITS)

  def _beam_context(self):
    return dict(lut=self._lut(), num_dates=self._num_dates())

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    split, year, tileid, path, geo = unit
    if split in splits:
      key, example = _tile_example(year, tileid, path, geo, params["size"] // 10,
                                   context["num_dates"], context["lut"])
      yield split, key, example

  @classmethod
  def _describe_unit(cls, unit):
    return f"tile {unit[2]} of 20{unit[1]:02d} ({unit[3]})"

  def _extra_metadata(self):
    return {"classes": [[n, c] for c, n in self._classes()], "fold": self.params["fold"],
            "years": [2000 + y for y in self.params["years"]],
            "resampling": "nearest (integer repetition) of x20 and x60 onto the 10 m grid"}

  def _describe_sources(self):
    return self._root()


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _tile_example(year, tileid, path, geo, size, num_dates, lut) -> tuple[str, dict]:
  """(key, example) of one tile in one year. Shared by the plain build and a Beam worker."""
  (xmin, xres, _, ymax, _, yres), srid = geo
  image, valid, dates, labels = _sample(path, year, size)
  image, valid, dates = bm.sort_by_date(image, valid, dates)
  image, valid, dates = bm.pad_series(image, valid, dates, num_dates, path)
  raw = labels.astype(np.int64)
  label = np.where((raw >= 0) & (raw < 65536), lut[np.clip(raw, 0, 65535)],
                   contract.IGNORE_INDEX).astype(np.uint8)
  return f"{year}/{tileid}", {
      contract.IMAGE: image, contract.VALID: valid, contract.DATES: dates,
      contract.LABEL: label, contract.CRS: f"EPSG:{srid}",
      contract.TRANSFORM: np.array([xmin, xres, 0.0, ymax, 0.0, yres], np.float64),
      contract.SCENE_ID: f"{tileid}_20{year:02d}",
      contract.ROW: np.int32(0), contract.COL: np.int32(0),
  }


def _sample(path, year, size):
  t = _read_tile(path)
  doy = np.asarray(t["dates/doy"]).reshape(-1)
  keep = doy != 0
  parts = []
  for key, n, f in (("x10", 4, 1), ("x20", 6, 2), ("x60", 3, 6)):
    arr = t[key]
    if arr.ndim != 4 or arr.shape[0] != doy.size or arr.shape[3] != n or \
        arr.shape[1:3] != (size // f, size // f):
      raise DataError(f"{path}: '{key}/data' has shape {arr.shape}, expected "
                      f"[{doy.size}, {size // f}, {size // f}, {n}]")
    parts.append(bm.upsample_to(np.moveaxis(arr[keep], -1, 1), (size, size),
                                f"{path}: {key}"))  # [T, C, H, W]
  image, ok = bm.to_dn(np.moveaxis(np.concatenate(parts, axis=1), 1, -1))
  labels = t["labels"]
  labels = labels[0] if labels.ndim == 3 else labels
  if labels.shape != (size, size):
    raise DataError(f"{path}: 'labels/data' of shape {t['labels'].shape}, expected "
                    f"[T, {size}, {size}]")
  dates = np.array([bm.doy_to_yyyymmdd(2000 + year, d) for d in doy[keep]], np.int32)
  return image, ok.all(axis=-1), dates, labels


def _read_tile(path: str) -> dict:
  """{feature: array} of the tile's one Example, `*/data` reshaped by `*/shape`."""
  records = read_records(path)
  if len(records) != 1:
    raise DataError(f"{path}: {len(records)} records, expected one Example")
  try:
    feats = parse_example(records[0])
  except WireError as e:
    raise DataError(f"{path}: not a tf.train.Example ({e})") from e
  out = {}
  for key in ("x10", "x20", "x60", "labels", "dates/doy"):
    data_key = key if key == "dates/doy" else f"{key}/data"
    if data_key not in feats:
      raise DataError(f"{path}: no feature '{data_key}' (has {sorted(feats)})")
    value = feats[data_key]
    arr = np.frombuffer(b"".join(value), "<i8") if isinstance(value, list) else value
    shape_key = f"{key}/shape" if key != "dates/doy" else "dates/shape"
    if shape_key in feats and key != "dates/doy":
      shape = tuple(int(v) for v in feats[shape_key])
      if int(np.prod(shape)) != arr.size:
        raise DataError(f"{path}: '{data_key}' has {arr.size} values, shape {shape}")
      arr = arr.reshape(shape)
    out[key] = arr
  return out
