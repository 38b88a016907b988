"""`landcover_tiles`: labelled tiles from image raster(s) plus a label raster.

`params.scenes` lists scenes, each {images: [source, ...] (or image: source), label: path,
scene_id: ''}; a source is whatever `s2_tiles` accepts (product folder, multi-band GeoTIFF,
or a mapping with path/date/band_order/...). Several images make a time series; `images`
may also be the path of a manifest (.csv with a header naming path, date, ...; or .json),
as `s2_tiles`'s `manifest`.
`params.band_order` gives the band order once for every multi-band image without its own.

`label` may instead be a vector file of polygons (GeoJSON, GeoPackage; Shapefile and other
OGR formats with pyogrio) with `label_column` naming its class column: reprojected and
rasterised onto the image grid (ee_jax/geo/vector_labels.py). Optional per scene:
`label_mapping` {column value: class name or index} (else the classes' raw values, then
their names), `label_layer` (a file with several layers), `label_border_px` (ignore that
many pixels at parcel borders, as PASTIS) and `label_outside` ('error': a polygon outside
the image is an error; 'skip': dropped, for a file that covers several scenes).

`params.classes` is the class map: a list of [name, raw value or list of raw values]; the
class index is the position in the list. Raw values not listed, and the label raster's
nodata, become `ignore_index` (255). Image and label must share CRS, transform and size;
otherwise, with `allow_reproject=True`, the label is reprojected (nearest) onto the image
grid, and without it the build stops naming both files and both grids.
"""

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from ee_jax.data import contract
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import bands as bandlib
from ee_jax.geo import products as productlib
from ee_jax.geo import remote
from ee_jax.geo.reader import Grid, open_raster
from ee_jax.geo.vector_labels import VectorLabels
from ee_jax.geo.vector_read import is_vector
from tfds_builders.common import TileBuilder
from tfds_builders.s2_tiles.builder import (TILING_DEFAULTS, dataset_band_order, read_manifest,
                                            validate_tiling)
from tfds_builders.scenes import Scene, scene_tiles


# Scene keys of a vector label file (the module docstring).
VECTOR_KEYS = ("label_column", "label_mapping", "label_layer", "label_border_px",
               "label_outside")


class LabelReader:
  """Reads label windows on the scene grid, mapped to class indices (255 = ignore)."""

  def __init__(self, path: str, grid: Grid, classes, nodata, allow_reproject: bool,
               image_path: str):
    self.path = path
    self._ds = open_raster(path)
    label_grid = Grid.of(self._ds)
    nodata = productlib.parse_nodata(nodata)
    self.nodata = self._ds.nodata if nodata is None else nodata
    self._reader = self._ds
    if not label_grid.same_as(grid):
      if not allow_reproject:
        self._ds.close()
        raise DataError(
            f"label raster {path} is not on the image grid of {image_path}: label "
            f"{label_grid.describe()}; image {grid.describe()}. Set "
            f"data.builder.allow_reproject=True to reproject the label (nearest).")
      fill = self.nodata if self.nodata is not None else np.iinfo(self._ds.dtypes[0]).max
      self.nodata = fill
      self._reader = WarpedVRT(self._ds, crs=grid.crs, transform=grid.transform,
                               width=grid.width, height=grid.height,
                               resampling=Resampling.nearest, src_nodata=self.nodata, nodata=fill)
    self._lut = [(index, np.atleast_1d(np.asarray(raw)))
                 for index, (_, raw) in enumerate(classes)]

  def __call__(self, window) -> np.ndarray:
    try:
      raw = self._reader.read(1, window=window)
    except rasterio.errors.RasterioError as e:
      raise DataError(f"{self.path}: reading window {window} failed ({e})") from e
    label = np.full(raw.shape, contract.IGNORE_INDEX, np.uint8)
    for index, values in self._lut:
      label[np.isin(raw, values)] = index
    if self.nodata is not None:
      label[raw == self.nodata] = contract.IGNORE_INDEX
    return label

  def close(self):
    if self._reader is not self._ds:
      self._reader.close()
    self._ds.close()


def open_labels(params: dict, scene: Scene, spec: dict):
  """The label reader of one scene (raster or vector), on the scene grid."""
  first_image = scene.acquisitions[0].files[0]
  if is_vector(spec["label"]):
    return VectorLabels(spec["label"], spec["label_column"], scene.grid, params["classes"],
                        first_image, mapping=spec.get("label_mapping"),
                        border_px=spec.get("label_border_px", 0),
                        layer=spec.get("label_layer"),
                        outside=spec.get("label_outside", "error"))
  return LabelReader(spec["label"], scene.grid, params["classes"], params["label_nodata"],
                     params["allow_reproject"], first_image)


class LandcoverTiles(TileBuilder):
  """Labelled land-cover tiles in the tile contract of docs/design.md."""

  LABELLED = True
  DEFAULT_PARAMS = dict(
      scenes=(),                 # ({images: [...], label: path, scene_id: ""}, ...)
      classes=(),                # ([name, raw value or [raw values]], ...)
      label_nodata="auto",       # 'auto': the label file's nodata; or a number (e.g. -1)
      allow_reproject=False,
      bands=tuple(bandlib.S2_L1C_BANDS),
      remove_offset="auto",
      nodata="auto",
      band_order=(),             # band order of every multi-band image that gives none
      split_fractions={"train": 0.7, "validation": 0.15, "test": 0.15},
      **TILING_DEFAULTS,
  )

  def _validate_params(self):
    where = f"data.builder ({self.name})"
    validate_tiling(self.params, where)
    p = self.params
    if not p["scenes"]:
      raise ConfigError(f"{where}: scenes is empty; list {{images, label}} for each scene")
    for i, s in enumerate(p["scenes"]):
      if not isinstance(s, dict) or "label" not in s or not ("images" in s or "image" in s):
        raise ConfigError(f"{where}: scenes[{i}] needs 'images' (or 'image') and 'label'")
      vector_keys = sorted(k for k in s if k in VECTOR_KEYS)
      if is_vector(s["label"]) and not s.get("label_column"):
        raise ConfigError(f"{where}: scenes[{i}]: label {s['label']} is a vector file; name "
                          f"its class column with 'label_column'")
      if not is_vector(s["label"]) and vector_keys:
        raise ConfigError(f"{where}: scenes[{i}]: {', '.join(vector_keys)} apply to a vector "
                          f"label file (.gpkg, .geojson, .shp, ...), not {s['label']}")
    if not p["classes"] or len(p["classes"]) > 255:
      raise ConfigError(f"{where}: classes must list 1..255 [name, raw values] pairs")
    for i, c in enumerate(p["classes"]):
      if len(c) != 2 or not isinstance(c[0], str):
        raise ConfigError(f"{where}: classes[{i}] must be [name, raw value(s)], got {c!r}")
    p["bands"] = [bandlib.normalise_band_name(b) for b in p["bands"]]
    dataset_band_order(p, where)

  def _scenes(self) -> list[tuple[Scene, dict]]:
    if not hasattr(self, "_scene_cache"):
      p = self.params
      self._scene_cache = []
      for spec in p["scenes"]:
        images = spec.get("images") or [spec["image"]]
        if isinstance(images, str) and remote.is_manifest(images):
          images = read_manifest(images)   # path,date[,...] per image: a time series
        images = [images] if isinstance(images, str) else list(images)
        acqs = [productlib.acquisition(img, p["bands"], remove_offset=p["remove_offset"],
                                       nodata=p["nodata"], band_order=p.get("band_order"))
                for img in images]
        self._scene_cache.append((Scene.from_acquisitions(acqs, spec.get("scene_id", "")),
                                  spec))
    return self._scene_cache

  def _split_names(self):
    return list(self.params["split_fractions"])

  def _tile_layout(self):
    scene, _ = self._scenes()[0]
    return dict(num_dates=len(scene.acquisitions), tile_size=self.params["tile_size"],
                bands=self.params["bands"], gsd=scene.grid.gsd,
                class_names=[c[0] for c in self.params["classes"]])

  def _tiles(self, split):
    for scene, spec in self._scenes():
      labels = open_labels(self.params, scene, spec)
      try:
        yield from scene_tiles(scene, self.params["bands"], self.params, split,
                               label_window=labels)
      finally:
        labels.close()

  # --- Beam (tfds_builders/beam_tiles.py): a unit is a scene and its spec ---------------
  def _beam_units(self):
    return self._scenes()

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    scene, spec = unit
    summary.add(scene)
    labels = open_labels(params, scene, spec)
    try:
      for split in splits:
        for key, example in scene_tiles(scene, params["bands"], params, split,
                                        label_window=labels):
          yield split, key, example
    finally:
      labels.close()

  @classmethod
  def _describe_unit(cls, unit):
    scene, spec = unit
    files = sorted({f for a in scene.acquisitions for f in a.files})
    return f"scene {scene.scene_id} (images {', '.join(files)}; label {spec['label']})"

  def _extra_metadata(self):
    return {
        "product_ids": [a.product_id for s, _ in self._scenes() for a in s.acquisitions],
        "offsets_removed": {a.product_id: a.offset for s, _ in self._scenes()
                            for a in s.acquisitions},
        "label_files": [spec["label"] for _, spec in self._scenes()],
        "classes": self.params["classes"],
    }

  def _describe_sources(self):
    return "scenes " + ", ".join(s.scene_id for s, _ in self._scenes())
