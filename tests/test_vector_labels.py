"""Vector labels: polygons (GeoJSON, GeoPackage written here) rasterised onto a tiny GeoTIFF's
grid, checked pixel by pixel; the border ignore band; reprojection from WGS84; one error line
for each mistake; and a landcover_tiles build from a vector label file."""

import json
import sqlite3
import struct

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import vector_read
from ee_jax.geo.reader import Grid
from ee_jax.geo.vector_labels import VectorLabels
from tests import rasters
from tests.helpers import BANDS, data_cfg

X0, Y0 = rasters.ORIGIN   # the image's top-left corner, EPSG:32633, 10 m pixels
CLASSES = [["crop", 1], ["forest", [2, 3]]]
I = 255                   # ignore


def _grid(tmp_path, size=8):
  path = rasters.write_raster(tmp_path / "image.tif", np.ones((size, size), np.uint16), 10)
  with rasterio.open(path) as ds:
    return str(path), Grid.of(ds)


def _rect(col0, row0, col1, row1):
  """The polygon of pixels [row0, row1) x [col0, col1) (edges on pixel edges), in UTM."""
  x0, x1, y0, y1 = X0 + 10 * col0, X0 + 10 * col1, Y0 - 10 * row0, Y0 - 10 * row1
  return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]


def _geojson(path, features, crs="EPSG:32633"):
  doc = {"type": "FeatureCollection", "features": [
      {"type": "Feature", "properties": props, "geometry": geom} for geom, props in features]}
  if crs:
    doc["crs"] = {"type": "name", "properties": {"name": crs}}
  path.write_text(json.dumps(doc))
  return str(path)


def _poly(rings):
  return {"type": "Polygon", "coordinates": rings}


TWO_PARCELS = [(_poly(_rect(1, 1, 4, 5)), {"cls": 1}), (_poly(_rect(4, 1, 7, 5)), {"cls": 3})]
EXPECTED = np.full((8, 8), I, np.uint8)
EXPECTED[1:5, 1:4] = 0      # crop
EXPECTED[1:5, 4:7] = 1      # forest (raw value 3)


def test_two_rectangles_rasterise_exactly_and_windows_agree(tmp_path):
  image, grid = _grid(tmp_path)
  labels = VectorLabels(_geojson(tmp_path / "p.geojson", TWO_PARCELS), "cls", grid, CLASSES,
                        image)
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)
  np.testing.assert_array_equal(labels(Window(3, 2, 4, 5)), EXPECTED[2:7, 3:7])


def test_border_band_ignores_pixels_next_to_another_parcel_or_unlabelled_ground(tmp_path):
  image, grid = _grid(tmp_path)
  labels = VectorLabels(_geojson(tmp_path / "p.geojson", TWO_PARCELS), "cls", grid, CLASSES,
                        image, border_px=1)
  expected = np.full((8, 8), I, np.uint8)
  expected[2:4, 2] = 0       # crop pixels whose 3x3 neighbourhood is all crop
  expected[2:4, 5] = 1       # forest likewise
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), expected)
  # a window's margin is read beyond it: the same pixels ignored as in the whole image
  np.testing.assert_array_equal(labels(Window(2, 1, 3, 3)), expected[1:4, 2:5])


def test_the_image_edge_is_not_a_border(tmp_path):
  image, grid = _grid(tmp_path)
  big = [(_poly(_rect(-3, -3, 11, 11)), {"cls": 2})]   # beyond the image on every side
  labels = VectorLabels(_geojson(tmp_path / "big.geojson", big), "cls", grid, CLASSES, image,
                        border_px=2)
  assert (labels(Window(0, 0, 8, 8)) == 1).all()


def test_polygons_in_wgs84_are_reprojected_to_the_image_crs(tmp_path):
  image, grid = _grid(tmp_path, size=10)
  ring = _rect(2, 2, 7, 7)[0]                          # 5 x 5 pixels in UTM 33N
  lon, lat = warp_transform("EPSG:32633", "EPSG:4326", [p[0] for p in ring],
                            [p[1] for p in ring])
  assert 14 < lon[0] < 16 and 41 < lat[0] < 42         # lon/lat order (RFC 7946)
  path = _geojson(tmp_path / "wgs84.geojson", [(_poly([list(zip(lon, lat))]), {"cls": 1})],
                  crs=None)
  label = VectorLabels(path, "cls", grid, CLASSES, image)(Window(0, 0, 10, 10))
  assert 20 <= (label == 0).sum() <= 30                # about the 25 pixels of the rectangle
  assert label[4, 4] == 0 and label[2, 2] == 0 and label[6, 6] == 0
  assert label[1, 1] == I and label[7, 7] == I and label[0, 9] == I


def test_label_mapping_maps_text_values_to_class_names(tmp_path):
  image, grid = _grid(tmp_path)
  feats = [(_poly(_rect(1, 1, 4, 5)), {"crop_type": "Winter wheat"}),
           (_poly(_rect(4, 1, 7, 5)), {"crop_type": "Oak"})]
  labels = VectorLabels(_geojson(tmp_path / "m.geojson", feats), "crop_type", grid, CLASSES,
                        image, mapping={"Winter wheat": "crop", "Oak": 1})
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)


def test_class_names_are_accepted_as_values(tmp_path):
  image, grid = _grid(tmp_path)
  feats = [(_poly(_rect(1, 1, 4, 5)), {"c": "crop"}), (_poly(_rect(4, 1, 7, 5)), {"c": "forest"})]
  labels = VectorLabels(_geojson(tmp_path / "n.geojson", feats), "c", grid, CLASSES, image)
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)


# A GeoPackage written by hand: the tables the standard requires of a feature layer, and
# each geometry as the GeoPackage header ('GP', version 0, flags, srs_id, no envelope) + WKB.
def _wkb_polygon(rings, order="<"):
  out = struct.pack(order + "BII", 1 if order == "<" else 0, 3, len(rings))
  for ring in rings:
    out += struct.pack(order + "I", len(ring))
    out += b"".join(struct.pack(order + "dd", *p) for p in ring)
  return out


def _write_gpkg(path, rows, srs_id=32633, column="cls"):
  con = sqlite3.connect(path)
  con.executescript(f"""
    CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
      organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
      definition TEXT NOT NULL, description TEXT);
    CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT NOT NULL,
      identifier TEXT, description TEXT DEFAULT '', last_change DATETIME, min_x DOUBLE,
      min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER);
    CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
      geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL,
      m TINYINT NOT NULL);
    INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84 / UTM zone 33N', {srs_id}, 'EPSG',
      {srs_id}, 'undefined', NULL);
    INSERT INTO gpkg_contents (table_name, data_type, srs_id) VALUES
      ('parcels', 'features', {srs_id});
    INSERT INTO gpkg_geometry_columns VALUES ('parcels', 'geom', 'GEOMETRY', {srs_id}, 0, 0);
    CREATE TABLE parcels (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom BLOB, {column} INTEGER);
  """)
  for wkb, value in rows:
    blob = b"GP" + bytes([0, 1]) + struct.pack("<i", srs_id) + wkb
    con.execute(f"INSERT INTO parcels (geom, {column}) VALUES (?, ?)", (blob, value))
  con.commit()
  con.close()
  return str(path)


def test_a_geopackage_polygon_and_multipolygon_rasterise_exactly(tmp_path):
  image, grid = _grid(tmp_path)
  half = [_rect(4, 1, 7, 3), _rect(4, 3, 7, 5)]        # the forest parcel as two parts
  multi = struct.pack(">BII", 0, 6, 2) + b"".join(_wkb_polygon(r, ">") for r in half)
  path = _write_gpkg(tmp_path / "p.gpkg", [(_wkb_polygon(_rect(1, 1, 4, 5)), 1), (multi, 2)])
  labels = VectorLabels(path, "cls", grid, CLASSES, image)
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)


def _error(tmp_path, path, column="cls", **kw) -> str:
  image, grid = _grid(tmp_path)
  with pytest.raises(DataError) as err:
    VectorLabels(path, column, grid, CLASSES, image, **kw)
  message = str(err.value)
  assert "\n" not in message and message.startswith(str(path))
  return message


def test_an_unknown_class_value_is_one_line_naming_the_feature_and_value(tmp_path):
  feats = TWO_PARCELS + [(_poly(_rect(0, 6, 2, 8)), {"cls": 9})]
  msg = _error(tmp_path, _geojson(tmp_path / "u.geojson", feats))
  assert "feature 2: unknown class value 9 in column 'cls'" in msg and "label_mapping" in msg
  gpkg = _write_gpkg(tmp_path / "u.gpkg", [(_wkb_polygon(_rect(1, 1, 4, 5)), 7)])
  assert "feature 0: unknown class value 7" in _error(tmp_path, gpkg)


def test_a_missing_column_is_one_line_listing_the_columns(tmp_path):
  msg = _error(tmp_path, _geojson(tmp_path / "c.geojson", TWO_PARCELS), column="class")
  assert "no column 'class' (label_column); its columns: cls" in msg
  gpkg = _write_gpkg(tmp_path / "c.gpkg", [(_wkb_polygon(_rect(1, 1, 4, 5)), 1)],
                     column="code")
  assert "no column 'cls' (label_column); its columns: code, fid" in _error(tmp_path, gpkg)


def test_a_polygon_outside_the_image_is_one_line_or_skipped(tmp_path):
  feats = TWO_PARCELS + [(_poly(_rect(20, 20, 24, 24)), {"cls": 2})]
  path = _geojson(tmp_path / "o.geojson", feats)
  msg = _error(tmp_path, path)
  assert "feature 2 (cls=2) lies entirely outside the image" in msg
  assert "image.tif" in msg and "label_outside='skip'" in msg
  image, grid = _grid(tmp_path)
  labels = VectorLabels(path, "cls", grid, CLASSES, image, outside="skip")
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)


def test_other_mistakes_are_one_line_each(tmp_path):
  point = [({"type": "Point", "coordinates": [X0 + 5, Y0 - 5]}, {"cls": 1})]
  assert "feature 0 is a Point, not a polygon" in _error(
      tmp_path, _geojson(tmp_path / "pt.geojson", point))
  assert "feature 1 has no value in column 'cls'" in _error(
      tmp_path, _geojson(tmp_path / "nv.geojson", [TWO_PARCELS[0],
                                                   (TWO_PARCELS[1][0], {"cls": None})]))
  (tmp_path / "bad.geojson").write_text("{not json")
  assert "not a readable GeoJSON file" in _error(tmp_path, str(tmp_path / "bad.geojson"))
  assert "'Oak' -> 'oak', which is not a class" in _error(
      tmp_path, _geojson(tmp_path / "mp.geojson", TWO_PARCELS), mapping={"Oak": "oak"})
  assert "vector label file not found" in _error(tmp_path, str(tmp_path / "none.gpkg"))


def test_a_shapefile_without_pyogrio_names_the_extra(tmp_path, monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel
  real_import = builtins.__import__

  def no_pyogrio(name, *args, **kw):
    if name.startswith("pyogrio"):
      raise ImportError(name)
    return real_import(name, *args, **kw)

  monkeypatch.setattr(builtins, "__import__", no_pyogrio)
  (tmp_path / "parcels.shp").write_bytes(b"\0" * 100)
  msg = _error(tmp_path, str(tmp_path / "parcels.shp"))
  assert "needs pyogrio (pip install 'ee-jax[vector]')" in msg
  assert vector_read.is_vector("a/B.GPKG") and not vector_read.is_vector("label.tif")


def test_landcover_tiles_builds_from_a_vector_label_file(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=64)
  # parcels that go on beyond the 64 x 64 px image: its edge is no parcel border
  feats = [(_poly(_rect(-2, -2, 32, 66)), {"cls": 1}), (_poly(_rect(32, -2, 66, 32)), {"cls": 2})]
  label = _geojson(tmp_path / "parcels.geojson", feats)
  scene = dict(images=[prod], label=label, label_column="cls", label_border_px=1)
  cfg = data_cfg(tmp_path, name="landcover_tiles", scenes=[scene], classes=CLASSES,
                 bands=BANDS, tile_size=32, stride=32, block_tiles=1,
                 split_fractions={"train": 1.0})
  builder = datasets.prepare(cfg)
  ds = builder.as_data_source("train")
  tiles = {(int(e["row"]), int(e["col"])): e[contract.LABEL] for e in
           (ds[i] for i in range(len(ds)))}
  crop = np.zeros((32, 32), np.uint8)
  crop[:, 31] = I                        # next to the forest parcel
  np.testing.assert_array_equal(tiles[(0, 0)], crop)
  crop_low = np.zeros((32, 32), np.uint8)
  crop_low[:, 31] = I                    # next to unlabelled ground
  crop_low[0, 31] = I
  np.testing.assert_array_equal(tiles[(32, 0)], crop_low)
  forest = np.ones((32, 32), np.uint8)
  forest[:, 0] = I                       # next to the crop parcel
  forest[31] = I                         # next to unlabelled ground
  np.testing.assert_array_equal(tiles[(0, 32)], forest)
  assert (32, 32) not in tiles or (tiles[(32, 32)] == I).all()
  bad = dict(images=[prod], label=label)
  with pytest.raises(ConfigError, match=r"scenes\[0\]: label .*parcels.geojson is a vector "
                     r"file; name its class column with 'label_column'"):
    datasets.make_builder(data_cfg(tmp_path, name="landcover_tiles", config_name="bad",
                                   scenes=[bad], classes=CLASSES, bands=BANDS))


@pytest.mark.parametrize("driver, suffix", [("GPKG", "gpkg"), ("ESRI Shapefile", "shp"),
                                            ("GeoJSON", "geojson")])
def test_files_written_by_gdal_read_the_same(tmp_path, driver, suffix):
  """Needs the [vector] extra (pyogrio) to write them; the GeoPackage and GeoJSON are then
  read without it, the Shapefile through it."""
  raw = pytest.importorskip("pyogrio.raw", reason="pyogrio not installed (extra [vector])")
  image, grid = _grid(tmp_path)
  wkbs = np.array([_wkb_polygon(_rect(1, 1, 4, 5)), _wkb_polygon(_rect(4, 1, 7, 5))], object)
  path = str(tmp_path / f"parcels.{suffix}")
  raw.write(path, wkbs, [np.array([1, 3], np.int32)], fields=["cls"], crs="EPSG:32633",
            geometry_type="Polygon", driver=driver)
  labels = VectorLabels(path, "cls", grid, CLASSES, image)
  np.testing.assert_array_equal(labels(Window(0, 0, 8, 8)), EXPECTED)
