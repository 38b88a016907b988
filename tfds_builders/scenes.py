"""Scenes (one footprint, T acquisitions on one grid) -> tile examples of one split."""

import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from ee_jax.data import contract
from ee_jax.data.splits import assign_blocks
from ee_jax.errors import DataError
from ee_jax.geo.products import Acquisition
from ee_jax.geo.reader import GDAL_ENV, AcquisitionReader, Grid, reference_grid
from ee_jax.geo.split_tiles import block_grid, iter_split_tiles


@dataclasses.dataclass(frozen=True)
class Scene:
  scene_id: str
  acquisitions: tuple[Acquisition, ...]  # one per date, in date order
  grid: Grid

  @classmethod
  def from_acquisitions(cls, acquisitions: Sequence[Acquisition], scene_id: str = "") -> "Scene":
    """The first acquisition's finest band grid is the scene grid; the others warp onto it."""
    if not acquisitions:
      raise DataError("a scene needs at least one product")
    acquisitions = tuple(sorted(acquisitions, key=lambda a: a.date))
    if len(acquisitions) > 1 and any(a.date == 0 for a in acquisitions):
      unknown = [a.product_id for a in acquisitions if a.date == 0]
      raise DataError(f"time series products without a date: {unknown}; give 'date' "
                      f"(YYYYMMDD) for each in the product list")
    return cls(scene_id or acquisitions[0].product_id, acquisitions,
               reference_grid(acquisitions[0]))

  @property
  def dates(self) -> np.ndarray:
    return np.array([a.date for a in self.acquisitions], np.int32)


def scene_tiles(scene: Scene, bands: Sequence[str], params: dict, split: str,
                label_window: Callable[[Window], np.ndarray] | None = None
                ) -> Iterator[tuple[str, dict]]:
  """Yields (key, example) in the tile contract for the tiles of `scene` in `split`.

  params: tile_size, stride, block_tiles, max_invalid, resampling, split_fractions,
  split_seed. Tiles with more than `max_invalid` of invalid pixels (over all dates) drop.
  """
  size = params["tile_size"]
  crs = scene.grid.crs.to_string()
  with rasterio.Env(**GDAL_ENV), contextlib.ExitStack() as stack:
    readers = [stack.enter_context(AcquisitionReader(acq, scene.grid, bands, params["resampling"]))
               for acq in scene.acquisitions]

    def read_window(window):
      images, valids = zip(*(r.read(window) for r in readers))
      arrays = {contract.IMAGE: (np.stack(images), 1), contract.VALID: (np.stack(valids), 1)}
      if label_window is not None:
        arrays[contract.LABEL] = (label_window(window), 0)
      return arrays

    blocks = block_grid(scene.grid.height, scene.grid.width, size, params["stride"],
                        params["block_tiles"])
    assignment = assign_blocks(scene.scene_id, blocks, params["split_fractions"],
                               params["split_seed"])

    for r, c, a in iter_split_tiles(
        scene.grid.height, scene.grid.width, tile_size=size, stride=params["stride"],
        block_tiles=params["block_tiles"], split_of_block=lambda *b: assignment.get(b),
        split=split,
        read_window=read_window):
      valid = a[contract.VALID]
      if 1.0 - valid.mean() > params["max_invalid"]:
        continue
      example = {
          contract.IMAGE: a[contract.IMAGE], contract.VALID: valid,
          contract.DATES: scene.dates, contract.CRS: crs,
          contract.TRANSFORM: np.array(
              (scene.grid.transform @ rasterio.Affine.translation(c, r)).to_gdal(), np.float64),
          contract.SCENE_ID: scene.scene_id, contract.ROW: r, contract.COL: c,
      }
      if label_window is not None:
        example[contract.LABEL] = a[contract.LABEL]
      yield f"{scene.scene_id}/{r:06d}/{c:06d}", example
