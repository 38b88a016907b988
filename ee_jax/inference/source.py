"""Opening a scene for inference exactly as the s2_tiles builder reads its products.

The scene is one or more acquisitions (a product folder, a multi-band GeoTIFF, a mapping
{path, date, band_order, ...} as in the builder's `products`, or a JSON/CSV manifest
listing them, as the builder's `manifest`), put on the first one's
finest band grid by `tfds_builders.scenes.Scene` and read through
`ee_jax.geo.reader.AcquisitionReader`, with the band list, resampling, DN offsets and
nodata of the checkpoint's training data. `RowBuffer` keeps a rolling band of full-width
rows in memory, so a scene of any size is read with bounded memory.
"""

import contextlib
import os
import re
from typing import Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from ee_jax import models
from ee_jax.errors import DataError
from ee_jax.geo import products as productlib
from ee_jax.geo import remote
from ee_jax.geo.reader import GDAL_ENV, AcquisitionReader
from tfds_builders.scenes import Scene


_DATED = re.compile(r"^(.*)@(\d{8})$")


def scene_specs(scene) -> list:
  """'a', 'a,b' (a time series), a list of paths or product mappings -> list of specs.

  A path may end in '@YYYYMMDD' to give its date where the product name holds none; a
  .json or .csv path is a product manifest, read as the s2_tiles builder reads it.
  """
  if isinstance(scene, (str, os.PathLike)):
    scene = [s.strip() for s in os.fspath(scene).split(",") if s.strip()]
  specs = []
  for spec in scene or []:
    if remote.is_manifest(spec):
      from tfds_builders.s2_tiles.builder import read_manifest  # pylint: disable=import-outside-toplevel
      specs.extend(read_manifest(os.fspath(spec)))
      continue
    m = _DATED.match(os.fspath(spec)) if isinstance(spec, (str, os.PathLike)) else None
    specs.append({"path": m.group(1), "date": int(m.group(2))} if m else spec)
  if not specs:
    raise DataError("no scene given: pass --scene=PATH (a product folder or a multi-band "
                    "GeoTIFF; a comma-separated list for a time series)")
  return specs


def open_scene(scene, meta: dict, opts, checkpoint: str = "") -> Scene:
  """The `Scene` of `scene` with the bands the checkpoint's model was trained on."""
  bands = list(meta["bands"])
  where = f" (the model in {checkpoint} needs bands {bands})" if checkpoint else ""
  acqs = []
  for spec in scene_specs(scene):
    if isinstance(spec, (str, os.PathLike)):
      spec = {"path": os.fspath(spec)}
    if opts.band_order and "band_order" not in spec and (
        remote.is_remote(spec["path"]) or not os.path.isdir(spec["path"])):
      spec = {**spec, "band_order": list(opts.band_order)}
    try:
      acqs.append(productlib.acquisition(spec, bands, remove_offset=opts.remove_offset,
                                         nodata=opts.nodata))
    except DataError as e:
      raise DataError(f"{e}{where}") from None
  scene = Scene.from_acquisitions(acqs)
  num_dates = int(meta.get("num_dates") or 1)
  model_cfg = meta.get("model") or {}
  why = None
  if models.stacks_dates(model_cfg):
    why = f"stacks {num_dates} date(s) into its input (temporal='stack')"
  elif meta.get("kind") == "finetune" and model_cfg.get("head_input"):
    why = (f"has a segmentation head that reads its input's {num_dates} date(s) "
           f"(model.head_input='{model_cfg['head_input']}')")
  if why and len(scene.acquisitions) != num_dates:
    raise DataError(f"the model{' in ' + checkpoint if checkpoint else ''} {why} but the "
                    f"scene has {len(scene.acquisitions)}: "
                    f"{[a.product_id for a in scene.acquisitions]}; pass exactly {num_dates} "
                    f"product(s), comma-separated, to --scene")
  gsd = meta.get("gsd")
  if opts.check_gsd and gsd and abs(scene.grid.gsd - float(gsd)) > 0.01 * float(gsd):
    raise DataError(f"{scene.scene_id}: pixel size {scene.grid.gsd:g} but the model was "
                    f"trained at {float(gsd):g}; resample the scene, or set "
                    f"--config.inference.check_gsd=False to run anyway")
  return scene


class RowBuffer(contextlib.AbstractContextManager):
  """Full-width rows [start, stop) of every date: image uint16 [T, n, W, C], valid [T, n, W].

  `ensure(r0, r1)` drops rows above r0 and reads only rows not yet held, so overlapping
  tile rows are read once.
  """

  def __init__(self, scene: Scene, bands: Sequence[str], resampling: str,
               gdal_cache_mb: int | None = None):
    self.scene = scene
    self.width = scene.grid.width
    self._stack = contextlib.ExitStack()
    env = dict(GDAL_ENV)
    if gdal_cache_mb:  # rows are read once each: a small cache suffices, and it is RSS
      env["GDAL_CACHEMAX"] = gdal_cache_mb * 2**20
    try:
      self._stack.enter_context(rasterio.Env(**env))
      self.readers = [self._stack.enter_context(
          AcquisitionReader(acq, scene.grid, bands, resampling)) for acq in scene.acquisitions]
    except Exception:
      self._stack.close()
      raise
    t, c = len(self.readers), len(bands)
    self.start = self.stop = 0
    self.image = np.zeros((t, 0, self.width, c), np.uint16)
    self.valid = np.zeros((t, 0, self.width), bool)

  def close(self):
    self._stack.close()

  def __exit__(self, *exc):
    self.close()

  def ensure(self, r0: int, r1: int):
    """Holds rows [r0, r1) afterwards; returns (first_row, valid [T, n, W]) of rows read now."""
    if r0 < self.start:
      raise ValueError(f"rows are read in order: {r0} < {self.start}")
    keep = max(0, self.stop - r0)
    self.image = self.image[:, self.image.shape[1] - keep:] if keep else self.image[:, :0]
    self.valid = self.valid[:, self.valid.shape[1] - keep:] if keep else self.valid[:, :0]
    first = max(self.stop, r0)
    self.start = r0
    if r1 <= first:
      self.stop = max(self.stop, r0)
      return first, self.valid[:, :0]
    window = Window(0, first, self.width, r1 - first)
    images, valids = zip(*(r.read(window) for r in self.readers))
    new_image, new_valid = np.stack(images), np.stack(valids)
    self.image = np.concatenate([self.image, new_image], axis=1)
    self.valid = np.concatenate([self.valid, new_valid], axis=1)
    self.stop = r1
    return first, new_valid

  def gather(self, rows: np.ndarray, cols: np.ndarray):
    """image [T, h, w, C], valid [T, h, w] at scene rows x cols (rows must be held)."""
    rows = rows - self.start
    if (np.diff(rows) == 1).all() and (np.diff(cols) == 1).all():   # plain window: slice
      rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
      return self.image[:, rs, cs], self.valid[:, rs, cs]
    ix = np.ix_(rows, cols)
    return self.image[:, ix[0], ix[1]], self.valid[:, ix[0], ix[1]]


class ArrayRows:
  """A scene already in memory (image uint16 [T, H, W, C], valid bool [T, H, W]) in the
  place of a `RowBuffer`, so `engine.blend_scene` tiles and blends an array exactly as it
  does a file (`ee_jax.api.embed`)."""

  def __init__(self, image: np.ndarray, valid: np.ndarray):
    self.image, self.valid = image, valid
    self.start, self.stop = 0, image.shape[1]
    self._handed = 0   # rows whose validity `ensure` has returned

  def ensure(self, r0: int, r1: int):
    """Every row is held; returns (first_row, valid [T, n, W]) of rows not returned before."""
    first = max(self._handed, r0)
    self._handed = max(self._handed, r1)
    return first, self.valid[:, first:max(first, r1)]

  gather = RowBuffer.gather
