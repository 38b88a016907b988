"""`pastis`: the PASTIS benchmark read from its downloaded folder (`params.manual_dir`).

Layout: `metadata.geojson` (one feature per patch: ID_PATCH, Fold 1-5, dates-S2 as a JSON
object {"0": YYYYMMDD, ...} or that object as a string, TILE; geometry in EPSG:2154),
`NORM_S2_patch.json`, `DATA_S2/S2_<ID>.npy` [T, 10, 128, 128] and
`ANNOTATIONS/TARGET_<ID>.npy` [3, 128, 128] (semantic classes in channel 0).

Splits follow the official fold table (`FOLDS`, chosen by `params.fold`): folds are the
dataset's spatial split. Classes 0 (background) .. 18 keep their index; 19 (void) and
anything else become 255. Dates are sorted. PASTIS patches have 38 to 61 dates; the
contract's fixed [T, ...] is the longest series of the dataset (`num_dates=0`, read from
metadata.geojson, the same for every fold so a pre-trained encoder moves between folds),
shorter series padded at the end with valid=False and date 0. The 'shared' temporal
backbone pools with the valid mask, so padding carries no weight; cropping the series
instead would discard acquisitions. Each patch may be cut into `tile_size` tiles (a
divisor of the patch size; 0, the default, keeps whole patches). The georeference comes from the patch geometry: top-left
corner = (min x, max y) of its bounds, 10 m pixels, EPSG:2154. PASTIS's own per-fold
normalisation (NORM_S2_patch.json) is kept in the metadata as `dataset_norm`, beside ours.
The S1 series of PASTIS-R are not read.
"""

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
CLASS_NAMES = ["background", "meadow", "soft_winter_wheat", "corn", "winter_barley",
               "winter_rapeseed", "spring_barley", "sunflower", "grapevine", "beet",
               "winter_triticale", "winter_durum_wheat", "fruits_vegetables_flowers",
               "potatoes", "leguminous_fodder", "soybeans", "orchard", "mixed_cereal",
               "sorghum"]
VOID = 19
# Official folds: fold k -> (train folds, validation fold, test fold).
FOLDS = {1: ((1, 2, 3), (4,), (5,)), 2: ((2, 3, 4), (5,), (1,)), 3: ((3, 4, 5), (1,), (2,)),
         4: ((4, 5, 1), (2,), (3,)), 5: ((5, 1, 2), (3,), (4,))}
SPLITS = ("train", "validation", "test")
_CRS = "EPSG:2154"
_GSD = 10.0


def _bounds(geometry) -> tuple[float, float, float, float]:
  """(min x, min y, max x, max y) of a GeoJSON geometry's coordinates."""
  xy = np.asarray(_flatten(geometry["coordinates"]), np.float64).reshape(-1, 2)
  return xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()


def _flatten(coords):
  if coords and isinstance(coords[0], (int, float)):
    return [coords[:2]]
  return [p for c in coords for p in _flatten(c)]


class Pastis(TileBuilder):
  """PASTIS Sentinel-2 patches in the tile contract (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  LABELLED = True
  DEFAULT_PARAMS = dict(
      manual_dir="",     # the downloaded PASTIS folder (holds metadata.geojson)
      fold=1,            # official fold 1-5 (FOLDS): which folds are train/validation/test
      tile_size=0,       # 0: the patch size (128); else a divisor of it: (128/size)^2 tiles
      num_dates=0,       # 0: the longest series in metadata.geojson; else pad to this
  )

  def _validate_params(self):
    bm.check_int(self.params, "fold", 1, self.name, 5)
    bm.check_int(self.params, "tile_size", 0, self.name)
    bm.check_int(self.params, "num_dates", 0, self.name)

  def _root(self) -> str:
    return bm.manual_root(self.params, self.name)

  def _patches(self) -> list[dict]:
    """The patches of metadata.geojson: id, fold, sorted dates (and their order), bounds."""
    if getattr(self, "_patch_cache", None) is None:
      path = bm.need(os.path.join(self._root(), "metadata.geojson"), self.name)
      try:
        with open(path) as f:
          features = json.load(f)["features"]
        patches = []
        for feat in features:
          props = feat["properties"]
          dates = props["dates-S2"]
          if isinstance(dates, str):
            dates = json.loads(dates)
          stored = [int(dates[k]) for k in sorted(dates, key=int)]
          patches.append(dict(id=int(props["ID_PATCH"]), fold=int(props["Fold"]),
                              tile=str(props.get("TILE", "")), dates=stored,
                              bounds=_bounds(feat["geometry"])))
      except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a PASTIS metadata file ({type(e).__name__}: {e})") from e
      if not patches:
        raise DataError(f"{path}: no patches")
      self._patch_cache = patches
    return self._patch_cache

  def _num_dates(self) -> int:
    longest = max(len(p["dates"]) for p in self._patches())
    n = self.params["num_dates"]
    if n and n < longest:
      raise ConfigError(f"data.builder.num_dates ({self.name}): {n} is less than the "
                        f"longest series ({longest} dates); use 0 or at least {longest}")
    return n or longest

  def _tile_size(self) -> int:
    """`tile_size`, or the patch size (from the first patch file's header) when 0."""
    if self.params["tile_size"]:
      return self.params["tile_size"]
    path = bm.need(self._files(self._patches()[0]["id"])[0], self.name)
    try:
      return int(np.load(path, mmap_mode="r").shape[-1])
    except (OSError, ValueError, IndexError) as e:
      raise DataError(f"{path}: unreadable ({e})") from e

  def _files(self, pid: int) -> tuple[str, str]:
    root = self._root()
    return (os.path.join(root, "DATA_S2", f"S2_{pid}.npy"),
            os.path.join(root, "ANNOTATIONS", f"TARGET_{pid}.npy"))

  # --- TileBuilder interface -------------------------------------------------------------
  def _split_names(self):
    return list(SPLITS)

  def _tile_layout(self):
    return dict(num_dates=self._num_dates(), tile_size=self._tile_size(),
                bands=BANDS, gsd=_GSD, class_names=CLASS_NAMES)

  def _split_generators(self, dl_manager):
    root = self._root()
    bm.need(os.path.join(root, "NORM_S2_patch.json"), self.name)
    folds = set(f for fs in FOLDS[self.params["fold"]] for f in fs)
    bm.first_missing([f for p in self._patches() if p["fold"] in folds
                      for f in self._files(p["id"])], self.name)
    return super()._split_generators(dl_manager)

  def _tiles(self, split) -> Iterator[tuple[str, dict]]:
    folds = FOLDS[self.params["fold"]][SPLITS.index(split)]
    s, t_n = self._tile_size(), self._num_dates()  # once: size 0 reads a patch's header
    for patch in self._patches():
      if patch["fold"] in folds:
        yield from _patch_tiles(patch, self._files(patch["id"]), s, t_n, self.name)

  # --- Beam (tfds_builders/beam_tiles.py): a unit is a patch -----------------------------
  def _beam_units(self):
    folds = {f for fs in FOLDS[self.params["fold"]] for f in fs}
    return [(p, self._files(p["id"])) for p in self._patches() if p["fold"] in folds]

  def _beam_context(self):
    return dict(tile_size=self._tile_size(), num_dates=self._num_dates())

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    patch, files = unit
    split = next(s for s, folds in zip(SPLITS, FOLDS[params["fold"]]) if patch["fold"] in folds)
    if split in splits:
      for key, example in _patch_tiles(patch, files, context["tile_size"],
                                       context["num_dates"], cls.name):
        yield split, key, example

  @classmethod
  def _describe_unit(cls, unit):
    patch, files = unit
    return f"PASTIS patch {patch['id']} ({' / '.join(files)})"

  def _extra_metadata(self):
    path = os.path.join(self._root(), "NORM_S2_patch.json")
    with open(path) as f:
      norm = json.load(f)
    return {"dataset_norm": norm,
            "dataset_norm_note": "PASTIS's own per-fold S2 mean/std (NORM_S2_patch.json), "
                                 "band order " + ", ".join(BANDS),
            "crs": _CRS, "folds": {s: list(f) for s, f in
                                   zip(SPLITS, FOLDS[self.params["fold"]])},
            "void_class": VOID}

  def _describe_sources(self):
    return f"{self._root()}, fold {self.params['fold']}"


def _patch_tiles(patch: dict, files, s: int, t_n: int, name: str):
  """One patch's tiles of `s` px, its series sorted and padded to `t_n` dates: yields
  (key, example). Shared by the plain build and a Beam worker."""
  s2_path, target_path = files
  image, valid, dates, label = _read_patch(patch, s2_path, target_path, s, name)
  size = image.shape[1]
  image, valid, dates = bm.sort_by_date(image, valid, dates)
  image, valid, dates = bm.pad_series(image, valid, dates, t_n, s2_path)
  x0, _, _, y1 = patch["bounds"]
  scene_id = f"pastis_{patch['id']}"
  for r in range(0, size, s):
    for c in range(0, size, s):
      yield f"{patch['id']}_{r}_{c}", {
          contract.IMAGE: np.ascontiguousarray(image[:, r:r + s, c:c + s]),
          contract.VALID: np.ascontiguousarray(valid[:, r:r + s, c:c + s]),
          contract.DATES: dates,
          contract.LABEL: np.ascontiguousarray(label[r:r + s, c:c + s]),
          contract.CRS: _CRS,
          contract.TRANSFORM: np.array([x0 + c * _GSD, _GSD, 0.0, y1 - r * _GSD, 0.0,
                                        -_GSD], np.float64),
          contract.SCENE_ID: scene_id,
          contract.ROW: np.int32(r),
          contract.COL: np.int32(c),
      }


def _read_patch(patch, s2_path, target_path, s: int, name: str):
  """One patch: image [T,H,W,C] uint16, valid [T,H,W], stored dates [T], label [H,W]."""
  try:
    raw = np.load(s2_path, allow_pickle=False)
    target = np.load(target_path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f"{s2_path} / {target_path}: unreadable ({e})") from e
  t = len(patch["dates"])
  if raw.ndim != 4 or raw.shape[0] != t or raw.shape[1] != len(BANDS) or \
      raw.shape[2] != raw.shape[3]:
    raise DataError(f"{s2_path}: shape {raw.shape}, expected [T={t} (dates-S2 of patch "
                    f"{patch['id']}), {len(BANDS)}, H, H]")
  size = raw.shape[2]
  if size % s:
    raise ConfigError(f"data.builder.tile_size ({name}): {s} does not divide the "
                      f"patch size {size} of {s2_path}")
  if target.ndim == 3:
    target = target[0]
  if target.shape != (size, size):
    raise DataError(f"{target_path}: shape {target.shape}, expected [3, {size}, {size}]")
  image, valid = bm.to_dn(np.moveaxis(raw, 1, -1))
  valid = valid.all(axis=-1)
  label = np.full(target.shape, contract.IGNORE_INDEX, np.uint8)
  known = (target >= 0) & (target < VOID)
  label[known] = target[known].astype(np.uint8)
  return image, valid, np.asarray(patch["dates"], np.int32), label
