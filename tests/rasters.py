"""Small real GeoTIFFs written with rasterio, for builder and scene tests.

A product folder holds one file per band at its native Sentinel-2 resolution, on UTM
zone 33N with a real transform, with values that are easy to predict after resampling.
"""

import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ee_jax.geo.bands import S2_NATIVE_GSD

CRS = "EPSG:32633"
ORIGIN = (500000.0, 4600000.0)  # x (east), y (north) of the top-left corner


def band_value(band_index: int) -> int:
  """The constant DN a test band holds away from nodata: distinct per band."""
  return 100 * (band_index + 1)


def write_raster(path, array, gsd, crs=CRS, origin=ORIGIN, nodata=None, dtype=None,
                 **profile):
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[None]
  with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                     count=array.shape[0], dtype=dtype or array.dtype, crs=crs,
                     transform=from_origin(origin[0], origin[1], gsd, gsd), nodata=nodata,
                     **profile) as ds:
    ds.write(array.astype(dtype or array.dtype))
  return path


def write_product(folder, bands, size_10m=128, offset=0, nodata_rows=0, crs=CRS,
                  origin=ORIGIN, skip=(), cloud_rows=0, scale=1):
  """A product folder; band i is `scale * band_value(i) + offset` except the first
  `nodata_rows` rows (10 m rows, DN 0); `cloud_rows` rows flagged in cloud_mask.tif."""
  os.makedirs(folder, exist_ok=True)
  for i, band in enumerate(bands):
    if band in skip:
      continue
    gsd = S2_NATIVE_GSD[band]
    n = -(-size_10m * 10 // gsd)  # coarse bands cover the whole 10 m footprint
    a = np.full((n, n), scale * band_value(i) + offset, np.uint16)
    a[: nodata_rows * 10 // gsd] = 0
    write_raster(os.path.join(folder, f"{band}.tif"), a, gsd, crs=crs, origin=origin)
  if cloud_rows:
    m = np.zeros((size_10m, size_10m), np.uint8)
    m[-cloud_rows:] = 1
    write_raster(os.path.join(folder, "cloud_mask.tif"), m, 10, crs=crs, origin=origin)
  return str(folder)
