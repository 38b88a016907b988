"""Reading acquisitions onto one pixel grid, window by window.

Every band is resampled onto a reference grid (by default the finest band's grid, 10 m
for Sentinel-2) through GDAL's warper (`WarpedVRT`), so 20 m and 60 m bands whose grids
are offset from the 10 m grid (as in real products) still land on the right ground pixel.
Reading happens per window, so memory stays bounded whatever the scene size.
"""

import contextlib
import dataclasses
import math

import numpy as np
import rasterio
import rasterio.transform
import rasterio.warp
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ee_jax.errors import DataError
from ee_jax.geo import remote
from ee_jax.geo.products import SCL_INVALID, Acquisition

DEFAULT_NODATA = 0  # Sentinel-2 digital number 0 means "no data"
GDAL_ENV = {"GDAL_CACHEMAX": 256 * 2**20, "GDAL_NUM_THREADS": "ALL_CPUS"}


@dataclasses.dataclass(frozen=True)
class Grid:
  crs: CRS
  transform: Affine
  width: int
  height: int

  @classmethod
  def of(cls, ds) -> "Grid":
    return cls(ds.crs, ds.transform, ds.width, ds.height)

  @property
  def gsd(self) -> float:
    return abs(self.transform.a)

  @property
  def bounds(self) -> tuple[float, float, float, float]:
    return rasterio.transform.array_bounds(self.height, self.width, self.transform)[::1]

  def same_as(self, other: "Grid", tol: float = 1e-6) -> bool:
    return (self.crs == other.crs and self.width == other.width and
            self.height == other.height and self.transform.almost_equals(other.transform, tol))

  def describe(self) -> str:
    return (f"{self.crs.to_string() if self.crs else 'no CRS'}, {self.width}x{self.height} px, "
            f"origin ({self.transform.c:.3f}, {self.transform.f:.3f}), pixel {self.gsd:g}")


def open_raster(path: str):
  """rasterio.open with one clear error for missing, truncated or unreadable files; URLs
  (gs://, s3://, http(s)://) are opened through GDAL's virtual file systems."""
  path = remote.gdal_path(path)
  try:
    return rasterio.open(path)
  except rasterio.errors.RasterioError as e:
    raise DataError(f"{path}: cannot open as a raster ({e}); the file may be missing, "
                    f"truncated or corrupt") from e


def reference_grid(acq: Acquisition) -> Grid:
  """The finest-resolution grid among the acquisition's band files."""
  grids = []
  for path in acq.files:
    with open_raster(path) as ds:
      grids.append(Grid.of(ds))
  return min(grids, key=lambda g: g.gsd)


def _extents_agree(a: Grid, b: Grid) -> bool:
  """Same footprint up to one coarse pixel (60 m bands of real products are offset)."""
  tol = max(a.gsd, b.gsd) + 1e-6
  ba = rasterio.transform.array_bounds(a.height, a.width, a.transform)
  bb = rasterio.transform.array_bounds(b.height, b.width, b.transform)
  return all(abs(x - y) <= tol for x, y in zip(ba, bb))


def check_consistent(acq: Acquisition) -> None:
  """The band files of one product must share CRS and extent (one coarse pixel of slack)."""
  grids = {}
  for path in acq.files:
    with open_raster(path) as ds:
      if ds.crs is None:
        raise DataError(f"{path}: raster has no CRS")
      grids[path] = Grid.of(ds)
  first_path, first = next(iter(grids.items()))
  for path, grid in grids.items():
    if grid.crs != first.crs:
      raise DataError(f"product {acq.product_id}: band files on different CRSs: {first_path} "
                      f"is {first.crs.to_string()}, {path} is {grid.crs.to_string()}")
    if not _extents_agree(first, grid):
      raise DataError(f"product {acq.product_id}: band files cover different extents: "
                      f"{first_path} ({first.describe()}) vs {path} ({grid.describe()})")


def digital_numbers(data: np.ndarray, nodata, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Band values as read -> (uint16 digital numbers, observed): a pixel is unobserved where
  any band (along `axis`) holds `nodata` (None: no value is nodata) or is NaN/infinite.
  Shared by the scene reader and `ee_jax.api`, so an array in memory is masked as a file
  would be."""
  data = np.asarray(data)
  observed = np.ones(np.delete(data.shape, axis), bool)
  if np.issubdtype(data.dtype, np.floating):
    finite = np.isfinite(data)
    observed = finite.all(axis=axis)
    data = np.where(finite, data, 0)
  if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
    observed &= (data != nodata).all(axis=axis)
  return np.clip(data, 0, 65535).astype(np.uint16), observed


class AcquisitionReader(contextlib.AbstractContextManager):
  """Reads windows of one acquisition on a target grid: (uint16 [h, w, C], valid [h, w])."""

  def __init__(self, acq: Acquisition, grid: Grid, band_names, resampling: str = "bilinear"):
    self.acq, self.grid, self.band_names = acq, grid, list(band_names)
    check_consistent(acq)
    self._stack = contextlib.ExitStack()
    self._sources = {}   # path -> (reader, nodata)
    try:
      for path in acq.files:
        self._sources[path] = self._open_on_grid(path, Resampling[resampling])
      self._masks = []
      if acq.cloud_mask:
        self._masks.append(("cloud_mask", acq.cloud_mask,
                            self._open_on_grid(acq.cloud_mask, Resampling.nearest, mask=True)[0]))
      if acq.scl:
        self._masks.append(("scl", acq.scl,
                            self._open_on_grid(acq.scl, Resampling.nearest, mask=True)[0]))
    except Exception:
      self._stack.close()
      raise
    self._check_overlap()

  def _open_on_grid(self, path, resampling, mask=False):
    ds = self._stack.enter_context(open_raster(path))
    if self.acq.nodata is not None and not mask:
      nodata = self.acq.nodata
    elif ds.nodata is not None:
      nodata = ds.nodata
    else:
      nodata = None if mask else DEFAULT_NODATA
    if Grid.of(ds).same_as(self.grid):
      return ds, nodata
    fill = nodata if nodata is not None else 0
    vrt = self._stack.enter_context(WarpedVRT(
        ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
        height=self.grid.height, resampling=resampling, src_nodata=nodata, nodata=fill))
    return vrt, nodata

  def _check_overlap(self):
    g = self.grid
    for path in self.acq.files:
      with open_raster(path) as ds:
        left, bottom, right, top = rasterio.warp.transform_bounds(ds.crs, g.crs, *ds.bounds)
      gl, gb, gr, gt = rasterio.transform.array_bounds(g.height, g.width, g.transform)
      if left >= gr or right <= gl or bottom >= gt or top <= gb:
        raise DataError(f"{path}: does not overlap the scene grid ({g.describe()})")

  def close(self):
    self._stack.close()

  def __exit__(self, *exc):
    self.close()

  def _read(self, path, reader, window, indexes):
    try:
      return reader.read(indexes, window=window)
    except rasterio.errors.RasterioError as e:
      raise DataError(f"{path}: reading window {window} failed ({e}); the file may be "
                      f"truncated or corrupt") from e

  def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(window.height), int(window.width)
    image = np.zeros((h, w, len(self.band_names)), np.uint16)
    valid = np.ones((h, w), bool)
    for path, (reader, nodata) in self._sources.items():
      wanted = [(c, self.acq.bands[b].index) for c, b in enumerate(self.band_names)
                if self.acq.bands[b].path == path]
      data = self._read(path, reader, window, [i for _, i in wanted])  # [n, h, w]
      data, observed = digital_numbers(data, nodata, axis=0)
      valid &= observed
      for (c, _), band in zip(wanted, data):
        image[..., c] = band
    for kind, path, reader in self._masks:
      m = self._read(path, reader, window, 1)
      valid &= ~np.isin(m, SCL_INVALID) if kind == "scl" else (m == 0)
    if self.acq.offset:
      image = np.where(image > self.acq.offset, image - self.acq.offset, 0).astype(np.uint16)
    image[~valid] = 0
    return image, valid
