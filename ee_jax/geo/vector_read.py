"""Polygons and one attribute column from a vector file, without a GIS library.

Labels often come as parcel polygons. GeoJSON is read with `json`, GeoPackage with `sqlite3`
and a small WKB decoder (a GeoPackage is SQLite with WKB geometries behind a short header);
any other OGR format (Shapefile, FlatGeobuf, ...) through `pyogrio` where it is installed
(`pip install 'ee-jax[vector]'`). Every mistake is one DataError naming the file.
"""

import dataclasses
import json
import os
import sqlite3
import struct

from ee_jax.errors import DataError

GEOJSON_SUFFIXES = (".geojson", ".json")
GPKG_SUFFIXES = (".gpkg",)
VECTOR_SUFFIXES = GEOJSON_SUFFIXES + GPKG_SUFFIXES + (".shp", ".fgb", ".gml", ".kml",
                                                      ".sqlite")


@dataclasses.dataclass
class Layer:
  """Polygons (GeoJSON-like dicts) with their column values, in `crs` (a string rasterio's
  CRS.from_user_input reads). `values[i]` is None where feature i has no value."""
  path: str
  column: str
  crs: str
  geometries: list
  values: list


def is_vector(path: str) -> bool:
  return str(path).lower().endswith(VECTOR_SUFFIXES)


def read_layer(path: str, column: str, layer: str | None = None) -> Layer:
  """The polygons of `path` (one layer; `layer` names it where the file has several) and
  their values in `column`."""
  from ee_jax.geo import remote  # pylint: disable=import-outside-toplevel
  if remote.is_remote(path):
    raise DataError(f"{path}: vector label files must be local (copy it first); remote "
                    f"label rasters are read in place")
  if not os.path.isfile(path):
    raise DataError(f"{path}: vector label file not found")
  lower = path.lower()
  if lower.endswith(GEOJSON_SUFFIXES):
    return _read_geojson(path, column)
  if lower.endswith(GPKG_SUFFIXES):
    return _read_gpkg(path, column, layer)
  return _read_ogr(path, column, layer)


def _missing_column(path, column, known) -> DataError:
  return DataError(f"{path}: no column '{column}' (label_column); its columns: "
                   f"{', '.join(sorted(known)) or 'none'}")


def _read_geojson(path, column) -> Layer:
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: not a readable GeoJSON file ({e})") from e
  if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
    raise DataError(f"{path}: not a GeoJSON FeatureCollection")
  features = doc.get("features", []) if doc["type"] == "FeatureCollection" else [doc]
  # RFC 7946: longitude/latitude on WGS84; the 2008 spec's named `crs` member still occurs.
  crs = (doc.get("crs") or {}).get("properties", {}).get("name") or "OGC:CRS84"
  crs = "EPSG:4326" if crs in ("OGC:CRS84", "urn:ogc:def:crs:OGC:1.3:CRS84") else crs
  columns = set()
  for feat in features:
    columns |= set((feat or {}).get("properties") or {})
  if column not in columns:
    raise _missing_column(path, column, columns)
  geometries = [(feat or {}).get("geometry") for feat in features]
  values = [((feat or {}).get("properties") or {}).get(column) for feat in features]
  return Layer(path, column, crs, geometries, values)


def _read_gpkg(path, column, layer) -> Layer:
  try:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
      rows = con.execute("SELECT g.table_name, g.column_name, s.organization, "
                         "s.organization_coordsys_id, s.definition FROM gpkg_geometry_columns g "
                         "JOIN gpkg_spatial_ref_sys s ON g.srs_id = s.srs_id").fetchall()
      layers = {r[0]: r[1:] for r in rows}
      if layer is None and len(layers) != 1:
        raise DataError(f"{path}: {len(layers)} feature layers ({', '.join(layers) or 'none'}); "
                        f"name one with label_layer")
      table = layer if layer is not None else next(iter(layers))
      if table not in layers:
        raise DataError(f"{path}: no feature layer '{table}' (label_layer); its layers: "
                        f"{', '.join(layers)}")
      geom_col, org, org_id, definition = layers[table]
      columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
      if column not in columns or column == geom_col:
        raise _missing_column(path, column, set(columns) - {geom_col})
      data = con.execute(f'SELECT "{geom_col}", "{column}" FROM "{table}"').fetchall()
    finally:
      con.close()
  except sqlite3.Error as e:
    raise DataError(f"{path}: not a readable GeoPackage ({e})") from e
  if org and org.upper() == "EPSG" and org_id and org_id > 0:
    crs = f"EPSG:{org_id}"
  elif definition and definition.strip().lower() != "undefined":
    crs = definition
  else:
    raise DataError(f"{path}: layer '{table}' has no coordinate reference system")
  geometries = [None if blob is None else _gpkg_geometry(path, i, bytes(blob))
                for i, (blob, _) in enumerate(data)]
  return Layer(path, column, crs, geometries, [v for _, v in data])


def _read_ogr(path, column, layer) -> Layer:
  try:
    import pyogrio  # pylint: disable=import-outside-toplevel
    from pyogrio import raw  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{path}: this vector format needs pyogrio (pip install "
                    f"'ee-jax[vector]'); GeoJSON and GeoPackage need nothing more") from e
  try:
    meta = pyogrio.read_info(path, layer=layer)
    if column not in list(meta["fields"]):
      raise _missing_column(path, column, set(meta["fields"]))
    meta, _, wkbs, fields = raw.read(path, layer=layer, columns=[column])[:4]
  except DataError:
    raise
  except Exception as e:  # pyogrio's own errors: unreadable file, unknown layer, ...
    raise DataError(f"{path}: cannot read as a vector file ({e})") from e
  if not meta.get("crs"):
    raise DataError(f"{path}: no coordinate reference system (a Shapefile's .prj?)")
  geometries = [None if w is None else _wkb_geometry(path, i, bytes(w), 0)[0]
                for i, w in enumerate(wkbs)]
  values = [None if v is None else (v.item() if hasattr(v, "item") else v) for v in fields[0]]
  return Layer(path, column, meta["crs"], geometries, values)


def _gpkg_geometry(path, index, blob):
  """A GeoPackage geometry blob: 'GP', version, flags, srs_id, envelope, then WKB."""
  if blob[:2] != b"GP":
    raise DataError(f"{path}: feature {index}: not a GeoPackage geometry")
  flags = blob[3]
  if flags & 0x10:   # the empty geometry
    return None
  envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0x7)
  if envelope is None:
    raise DataError(f"{path}: feature {index}: bad GeoPackage envelope flag")
  return _wkb_geometry(path, index, blob, 8 + envelope)[0]


_POLYGON, _MULTIPOLYGON = 3, 6


def _wkb_geometry(path, index, data, offset):
  """(GeoJSON-like Polygon/MultiPolygon, next offset) from WKB (ISO or EWKB Z/M flags)."""
  try:
    order = "<" if data[offset] == 1 else ">"
    code, = struct.unpack_from(order + "I", data, offset + 1)
    offset += 5
    if code & 0x20000000:   # EWKB SRID
      offset += 4
    dims = 2 + bool(code & 0x80000000) + bool(code & 0x40000000)
    code &= 0x0FFFFFFF
    dims += {1: 1, 2: 1, 3: 2}.get(code // 1000, 0)   # ISO: 1000s Z, 2000s M, 3000s ZM
    kind = code % 1000
    if kind == _POLYGON:
      rings, offset = _rings(data, offset, order, dims)
      return {"type": "Polygon", "coordinates": rings}, offset
    if kind == _MULTIPOLYGON:
      count, = struct.unpack_from(order + "I", data, offset)
      offset += 4
      polygons = []
      for _ in range(count):
        poly, offset = _wkb_geometry(path, index, data, offset)
        polygons.append(poly["coordinates"])
      return {"type": "MultiPolygon", "coordinates": polygons}, offset
  except (struct.error, IndexError) as e:
    raise DataError(f"{path}: feature {index}: truncated geometry ({e})") from e
  names = {1: "Point", 2: "LineString", 4: "MultiPoint", 5: "MultiLineString",
           7: "GeometryCollection"}
  raise DataError(f"{path}: feature {index} is a {names.get(kind, f'WKB type {code}')}, not a "
                  f"polygon; labels need polygons")


def _rings(data, offset, order, dims):
  count, = struct.unpack_from(order + "I", data, offset)
  offset += 4
  rings = []
  for _ in range(count):
    n, = struct.unpack_from(order + "I", data, offset)
    offset += 4
    flat = struct.unpack_from(f"{order}{n * dims}d", data, offset)
    offset += 8 * n * dims
    rings.append([flat[i:i + 2] for i in range(0, len(flat), dims)])
  return rings, offset
