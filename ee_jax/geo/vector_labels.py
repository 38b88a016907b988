"""Parcel polygons rasterised onto an image grid as class labels (255 = ignore).

Crop-type labels usually come as polygons with a class column. Each polygon is reprojected
to the image CRS and burnt into the pixels whose centre it contains
(rasterio.features.rasterize, all_touched=False), a later feature over an earlier one;
pixels no polygon covers are ignored. `border_px > 0` also ignores every pixel within that
many pixels (a square neighbourhood) of another parcel or of unlabelled ground, as PASTIS
does: a pixel on a parcel boundary mixes two classes. Labels are made per window, with the
border margin read around it, so memory follows the tile, not the scene.
"""

import numpy as np
import rasterio
from rasterio import features
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage

from ee_jax.data import contract
from ee_jax.errors import DataError
from ee_jax.geo.reader import Grid
from ee_jax.geo.vector_read import read_layer

OUTSIDE = ("error", "skip")


def _key(value) -> str:
  """One spelling per value: 3, 3.0 and '3' alike; other strings as they are."""
  if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
    return str(int(value)) if float(value).is_integer() else repr(float(value))
  return str(value).strip()


def class_lookup(classes, mapping=None) -> dict[str, int]:
  """Column value -> class index: `mapping` ({value: class name or index}) where given, else
  the classes' raw values, then their names."""
  names = [c[0] for c in classes]
  if mapping:
    lut = {}
    for value, target in dict(mapping).items():
      if isinstance(target, str):
        if target not in names:
          raise DataError(f"label_mapping: '{value}' -> '{target}', which is not a class "
                          f"(classes: {', '.join(names)})")
        target = names.index(target)
      if not 0 <= int(target) < len(names):
        raise DataError(f"label_mapping: '{value}' -> {target}, outside 0..{len(names) - 1}")
      lut[_key(value)] = int(target)
    return lut
  lut = {}
  for index, (name, raw) in enumerate(classes):
    lut.setdefault(_key(name), index)
    for r in (raw if isinstance(raw, (list, tuple)) else [raw]):
      lut[_key(r)] = index
  return lut


def _bounds(geom) -> tuple[float, float, float, float]:
  rings = geom["coordinates"] if geom["type"] == "Polygon" else [
      r for poly in geom["coordinates"] for r in poly]
  xy = np.array([p[:2] for ring in rings for p in ring], np.float64).reshape(-1, 2)
  if not len(xy):
    return (np.inf, np.inf, -np.inf, -np.inf)
  return (*xy.min(0), *xy.max(0))


class VectorLabels:
  """Label windows of `grid` from the polygons of `path` (column `column`)."""

  def __init__(self, path: str, column: str, grid: Grid, classes, image_path: str,
               mapping=None, border_px: int = 0, layer: str | None = None,
               outside: str = "error"):
    if outside not in OUTSIDE:
      raise DataError(f"{path}: label_outside='{outside}'; known: {', '.join(OUTSIDE)}")
    if int(border_px) < 0:
      raise DataError(f"{path}: label_border_px={border_px} must be >= 0")
    self.path, self.grid, self.border = path, grid, int(border_px)
    data = read_layer(path, column, layer)
    try:
      lut = class_lookup(classes, mapping)
    except DataError as e:
      raise DataError(f"{path}: {e}") from e
    shown = ", ".join(sorted(lut)) if len(lut) <= 40 else f"{len(lut)} values"
    kept, indices = [], []
    for i, (geom, value) in enumerate(zip(data.geometries, data.values)):
      if geom is None:
        continue   # an empty geometry labels nothing
      if geom.get("type") not in ("Polygon", "MultiPolygon"):
        raise DataError(f"{path}: feature {i} is a {geom.get('type')}, not a polygon; labels "
                        f"need polygons")
      if value is None:
        raise DataError(f"{path}: feature {i} has no value in column '{column}'")
      if _key(value) not in lut:
        raise DataError(f"{path}: feature {i}: unknown class value {value!r} in column "
                        f"'{column}' (known: {shown}); list it in the classes or in "
                        f"label_mapping")
      kept.append((i, value, geom))
      indices.append(lut[_key(value)])
    if not kept:
      raise DataError(f"{path}: no polygons")
    try:
      src = CRS.from_user_input(data.crs)
      geoms = transform_geom(src, grid.crs, [g for _, _, g in kept])
    except (rasterio.errors.RasterioError, ValueError) as e:
      raise DataError(f"{path}: cannot reproject its polygons from {data.crs} to the image's "
                      f"{grid.crs} ({e})") from e
    bounds = np.array([_bounds(g) for g in geoms], np.float64)
    left, bottom, right, top = grid.bounds
    out = ((bounds[:, 2] <= left) | (bounds[:, 0] >= right) | (bounds[:, 3] <= bottom) |
           (bounds[:, 1] >= top))
    if out.any() and outside == "error":
      i, value, _ = kept[int(np.flatnonzero(out)[0])]
      raise DataError(f"{path}: feature {i} ({column}={value!r}) lies entirely outside the "
                      f"image {image_path}; remove it, or set label_outside='skip' in the "
                      f"scene (a file that covers several scenes)")
    keep = np.flatnonzero(~out)
    self._geoms = [geoms[k] for k in keep]
    self._bounds = bounds[keep]
    # feature id (1-based, 0 = no polygon) -> class index
    self._lut = np.array([contract.IGNORE_INDEX] + [indices[k] for k in keep], np.uint8)

  def __call__(self, window: Window) -> np.ndarray:
    b = self.border
    height, width = int(window.height), int(window.width)
    padded = Window(window.col_off - b, window.row_off - b, width + 2 * b, height + 2 * b)
    shape = (height + 2 * b, width + 2 * b)
    transform = window_transform(padded, self.grid.transform)
    left, bottom, right, top = array_bounds(shape[0], shape[1], transform)
    hit = np.flatnonzero((self._bounds[:, 0] <= right) & (self._bounds[:, 2] >= left) &
                         (self._bounds[:, 1] <= top) & (self._bounds[:, 3] >= bottom))
    ids = np.zeros(shape, np.int32)
    if len(hit):
      ids = features.rasterize([(self._geoms[k], int(k) + 1) for k in hit], out_shape=shape,
                               transform=transform, fill=0, all_touched=False,
                               dtype=np.int32)
    label = self._lut[ids]
    if b:
      size = 2 * b + 1
      mixed = (ndimage.maximum_filter(ids, size, mode="nearest") !=
               ndimage.minimum_filter(ids, size, mode="nearest"))
      label[mixed] = contract.IGNORE_INDEX
    return label[b:b + height, b:b + width]

  def close(self):
    """Nothing held open (the polygons are read once); LabelReader's interface."""
