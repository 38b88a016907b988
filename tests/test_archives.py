"""Archive layouts as published (ee_jax/geo/archives): Major TOM Core Parquet shards and
SSL4EO-S12 roots, written here in their layout and built through the s2_tiles builder."""

import os
import re
import shutil

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from tests import rasters

BANDS = ["B02", "B04", "B8A", "B01"]   # 10, 10, 20 and 60 m
SIZE = 64                               # 10 m pixels a side


def _build(tmp_path, name, archive, **builder):
  params = dict(source="manual", archive=archive, bands=BANDS, tile_size=32, stride=32,
                block_tiles=1)
  params.update(builder)
  cfg = ml_collections.ConfigDict(dict(name="s2_tiles", config_name=name,
                                       data_dir=str(tmp_path / "tfds"), builder=params))
  return datasets.prepare(cfg)


def _all_tiles(b):
  return [d[i] for s in b.info.splits for d in [b.as_data_source(s)] for i in range(len(d))]


def _geotiff_bytes(array, gsd, crs, origin, **profile):
  array = np.asarray(array)
  with MemoryFile() as mem:
    with mem.open(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                  dtype=array.dtype, crs=crs,
                  transform=from_origin(origin[0], origin[1], gsd, gsd), **profile) as ds:
      ds.write(array, 1)
    return mem.read()


# --- Major TOM Core ---------------------------------------------------------------------
# Rows as the published shards hold them; each 10 m band random, coarser bands constant.
ROWS = [
    dict(grid_cell="433U_1095R", crs="EPSG:32633", origin=(500000.0, 4600000.0),
         product_id="S2B_MSIL2A_20200815T101559_N0214_R065_T33TUG_20200815T130011",
         product_datetime="20200815T101559", offset=0, cloud_rows=0),
    dict(grid_cell="433U_1096R", crs="EPSG:32632", origin=(700000.0, 4800000.0),
         product_id="S2A_MSIL2A_20220706T085611_N0400_R007_T32TQM_20220706T120000",
         product_datetime="20220706T085611", offset=1000, cloud_rows=4),
]


def _row_pixels(i):
  rng = np.random.default_rng(i)
  fine = {b: rng.integers(1, 5000, (SIZE, SIZE)).astype(np.uint16) for b in ("B02", "B04")}
  coarse = {"B8A": 700 + i, "B01": 900 + i}
  return fine, coarse


def _majortom_row(i, **spec):
  fine, coarse = _row_pixels(i)
  row = {k: spec[k] for k in ("product_id", "grid_cell", "product_datetime")}
  row["thumbnail"] = b"\x89PNG\r\n\x1a\n not read"
  for band in ("B02", "B03", "B04", "B08"):
    a = fine.get(band, np.full((SIZE, SIZE), 50, np.uint16)) + spec["offset"]
    row[band] = _geotiff_bytes(a.astype(np.uint16), 10, spec["crs"], spec["origin"])
  for band, gsd in (("B8A", 20), ("B01", 60)):
    n = -(-SIZE * 10 // gsd)
    row[band] = _geotiff_bytes(np.full((n, n), coarse[band] + spec["offset"], np.uint16), gsd,
                               spec["crs"], spec["origin"])
  mask = np.zeros((SIZE, SIZE), np.uint8)
  mask[:spec["cloud_rows"]] = 1
  row["cloud_mask"] = (_geotiff_bytes(mask, 10, spec["crs"], spec["origin"])
                       if spec["cloud_rows"] else None)
  return row


def _write_shard(path, rows, drop=()):
  """One row per row group, as Major TOM writes its shards."""
  columns = [c for c in rows[0] if c not in drop]
  table = pa.table({c: [r[c] for r in rows] for c in columns})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(table, path, row_group_size=1)
  return str(path)


def test_majortom_shards_build_row_by_row_with_offsets_and_cloud_mask(tmp_path):
  images = tmp_path / "Core-S2L2A" / "images"
  _write_shard(images / "part_00001.parquet", [_majortom_row(0, **ROWS[0])])
  _write_shard(images / "part_00002.parquet", [_majortom_row(1, **ROWS[1])])
  # The published root also holds the row index, which is not a shard.
  pq.write_table(pa.table({"grid_cell": ["x"], "parquet_row": [0]}),
                 tmp_path / "Core-S2L2A" / "metadata.parquet")
  b = _build(tmp_path, "majortom", {"layout": "majortom_parquet",
                                    "root": str(tmp_path / "Core-S2L2A")}, max_invalid=0.5)
  meta = b.info.metadata
  ids = [f"{r['grid_cell']}_{r['product_id']}" for r in ROWS]
  dates = [20200815, 20220706]
  assert meta["archive"]["products"] == meta["archive"]["scenes"] == 2   # counted once
  assert meta["archive"]["offsets_removed"] == {"0": 1, "1000": 1}
  assert meta["archive"]["first_and_last_date"] == dates
  assert meta["archive"]["scene_crs"] == {"EPSG:32633": 1, "EPSG:32632": 1}
  assert "product_ids" not in meta
  assert meta[contract.META_NUM_DATES] == 1
  tiles = _all_tiles(b)
  assert len(tiles) == 2 * 4
  assert {contract.as_text(e[contract.SCENE_ID]) for e in tiles} == set(ids)
  for e in tiles:
    i = ids.index(contract.as_text(e[contract.SCENE_ID]))
    fine, coarse = _row_pixels(i)
    r, c = int(e[contract.ROW]), int(e[contract.COL])
    assert contract.as_text(e[contract.CRS]) == ROWS[i]["crs"]
    assert e[contract.DATES].tolist() == [dates[i]]
    valid = e[contract.VALID][0]
    cloudy = np.zeros((SIZE, SIZE), bool)
    cloudy[:ROWS[i]["cloud_rows"]] = True
    np.testing.assert_array_equal(valid, ~cloudy[r:r + 32, c:c + 32])
    for k, band in enumerate(BANDS):
      want = (fine[band][r:r + 32, c:c + 32] if band in fine
              else np.full((32, 32), coarse[band], np.uint16))
      np.testing.assert_array_equal(e[contract.IMAGE][0, ..., k], np.where(valid, want, 0))


def test_majortom_missing_band_column_and_corrupt_bytes_are_one_line(tmp_path):
  shard = _write_shard(tmp_path / "a" / "part_00001.parquet", [_majortom_row(0, **ROWS[0])],
                       drop=("B8A",))
  with pytest.raises(DataError, match=rf"^{re.escape(shard)}: no column for band\(s\) "
                                      rf"\['B8A'\]") as err:
    _build(tmp_path, "mt_missing", f"majortom_parquet:{shard}")
  assert "\n" not in str(err.value)
  rows = [_majortom_row(0, **ROWS[0]), _majortom_row(0, **ROWS[0])]
  rows[1]["B04"] = rows[1]["B04"][:40] + b"garbage"
  shard = _write_shard(tmp_path / "b" / "part_00001.parquet", rows)
  with pytest.raises(DataError, match=rf"^{re.escape(shard)}: row 1: column B04 is not a "
                                      rf"readable GeoTIFF") as err:
    _build(tmp_path, "mt_corrupt", {"layout": "majortom_parquet", "root": str(tmp_path / "b")})
  assert "\n" not in str(err.value)
  # Bytes that open but do not decode: the read error names the shard, the row, the band.
  good = _majortom_row(0, **ROWS[0])
  data = bytearray(_geotiff_bytes(_row_pixels(0)[0]["B02"], 10, ROWS[0]["crs"],
                                  ROWS[0]["origin"], compress="deflate"))
  start = re.search(rb"\x78[\x01\x5e\x9c\xda]", bytes(data)).start()   # zlib header
  data[start:start + 2] = b"\0\0"
  good["B02"] = bytes(data)
  with MemoryFile(good["B02"]) as mem, mem.open() as ds:   # the header still opens
    assert ds.crs is not None
  shard = _write_shard(tmp_path / "c" / "part_00001.parquet", [good])
  with pytest.raises(DataError, match=rf"{re.escape(shard)}/row0/B02: reading window") as err:
    _build(tmp_path, "mt_undecodable", {"layout": "majortom_parquet", "root": shard})
  assert "\n" not in str(err.value)
  assert not (tmp_path / "tfds" / "s2_tiles" / "mt_undecodable" / "1.0.0").exists()
  with pytest.raises(ConfigError, match="one date per grid cell"):
    _build(tmp_path, "mt_series", {"layout": "majortom_parquet", "root": shard},
           time_series=True)


# --- SSL4EO-S12 -------------------------------------------------------------------------
SSL4EO_DATES = {"0000001": ["20200604T054639_20200604T054831_T43RCP",
                            "20200813T054639_20200813T054952_T43RCP"],
                "0000007": ["20210301T101021_20210301T101500_T32TQM",
                            "20210915T101021_20210915T101700_T32TQM"]}


def _ssl4eo_value(loc, t, band):
  return 100 * (BANDS.index(band) + 1) + 10 * t + int(loc)


def _write_ssl4eo(root, level="s2c"):
  """<root>/<level>/<location>/<date>/B1.tif ...: every band on one grid, no leading zero."""
  for n, (loc, dates) in enumerate(SSL4EO_DATES.items()):
    for t, date in enumerate(dates):
      folder = root / level / loc / date
      os.makedirs(folder)
      for band in BANDS:
        name = band[0] + band[1:].lstrip("0")   # B02 -> B2, B8A stays
        a = np.full((SIZE, SIZE), _ssl4eo_value(loc, t, band), np.uint16)
        rasters.write_raster(folder / f"{name}.tif", a, 10,
                             origin=(500000.0 + 10000 * n, 4600000.0))
  return root


def test_ssl4eo_root_each_date_a_product_or_each_location_a_series(tmp_path):
  root = _write_ssl4eo(tmp_path / "SSL4EO-S12")
  b = _build(tmp_path, "ssl_dates", {"layout": "ssl4eo", "root": str(root)})
  tiles = _all_tiles(b)
  assert len(tiles) == 4 * 4 and b.info.metadata[contract.META_NUM_DATES] == 1
  assert {contract.as_text(e[contract.SCENE_ID]) for e in tiles} == {
      f"s2c_{loc}_{d}" for loc, dates in SSL4EO_DATES.items() for d in dates}
  assert b.info.metadata["archive"]["products"] == b.info.metadata["archive"]["scenes"] == 4
  for e in tiles:
    _, loc, date = contract.as_text(e[contract.SCENE_ID]).split("_", 2)
    t = SSL4EO_DATES[loc].index(date)
    assert e[contract.DATES].tolist() == [int(date[:8])]
    for k, band in enumerate(BANDS):
      assert (e[contract.IMAGE][0, ..., k] == _ssl4eo_value(loc, t, band)).all()

  series = _build(tmp_path, "ssl_series", {"layout": "ssl4eo", "root": str(root / "s2c")},
                  time_series=True)
  assert series.info.metadata[contract.META_NUM_DATES] == 2
  assert series.info.metadata["archive"]["products"] == 4
  assert series.info.metadata["archive"]["scenes"] == 2
  tiles = _all_tiles(series)
  assert len(tiles) == 2 * 4
  assert {contract.as_text(e[contract.SCENE_ID]) for e in tiles} == {"s2c_0000001",
                                                                     "s2c_0000007"}
  for e in tiles:
    loc = contract.as_text(e[contract.SCENE_ID]).split("_")[1]
    assert e[contract.DATES].tolist() == [int(d[:8]) for d in SSL4EO_DATES[loc]]
    for t in range(2):
      assert (e[contract.IMAGE][t, ..., 0] == _ssl4eo_value(loc, t, "B02")).all()

  # A location with fewer dates is padded at the end (valid False, date 0).
  shutil.rmtree(root / "s2c" / "0000007" / SSL4EO_DATES["0000007"][1])
  padded = _build(tmp_path, "ssl_padded", {"layout": "ssl4eo", "root": str(root)},
                  time_series=True)
  e = next(e for e in _all_tiles(padded)
           if contract.as_text(e[contract.SCENE_ID]) == "s2c_0000007")
  assert e[contract.DATES].tolist() == [20210301, 0]
  assert e[contract.VALID][0].all() and not e[contract.VALID][1].any()
  assert (e[contract.IMAGE][1] == 0).all()


def test_ssl4eo_missing_band_file_and_two_levels_are_one_line(tmp_path):
  root = _write_ssl4eo(tmp_path / "SSL4EO-S12")
  folder = root / "s2c" / "0000007" / SSL4EO_DATES["0000007"][1]
  os.remove(folder / "B8A.tif")
  with pytest.raises(DataError, match=rf"^{re.escape(str(folder))}: band file\(s\) "
                                      rf"\['B8A'\] not found") as err:
    _build(tmp_path, "ssl_missing", {"layout": "ssl4eo", "root": str(root)})
  assert "\n" not in str(err.value)
  os.makedirs(root / "s2a" / "0000001")
  with pytest.raises(ConfigError, match=r"holds levels \['s2a', 's2c'\].*archive.levels"):
    _build(tmp_path, "ssl_levels", {"layout": "ssl4eo", "root": str(root)})
  with pytest.raises(ConfigError, match="archive is the whole source"):
    _build(tmp_path, "ssl_both", {"layout": "ssl4eo", "root": str(root)},
           products=[str(folder)])


def test_real_ssl4eo_sample_through_the_archive_option(shared_data, tmp_path):
  """The real SSL4EO-S12 sample: L1C location 0000200 as one series of its two dates."""
  root = shared_data / "rico_hdl" / "SSL4EO-S12"
  b = _build(tmp_path, "ssl_real", {"layout": "ssl4eo", "root": str(root), "levels": ["s2c"]},
             time_series=True, bands=["B02", "B08"], tile_size=64, stride=64)
  assert b.info.metadata["archive"]["products"] == 2
  tiles = _all_tiles(b)
  assert len(tiles) == 16  # 264 px -> 4 x 4 tiles of 64
  assert {contract.as_text(e[contract.SCENE_ID]) for e in tiles} == {"s2c_0000200"}
  e = tiles[-1]
  assert e[contract.DATES].tolist() == [20200604, 20200823]
  r, c = int(e[contract.ROW]), int(e[contract.COL])
  for t, date in enumerate(sorted(os.listdir(root / "s2c" / "0000200"))):
    with rasterio.open(root / "s2c" / "0000200" / date / "B2.tif") as src:
      want = src.read(1, window=rasterio.windows.Window(c, r, 64, 64))
    np.testing.assert_array_equal(e[contract.IMAGE][t, ..., 0], want)
  # L2A has no B10: one line naming the date folder and the band.
  with pytest.raises(DataError, match=r"s2a/0000200/20200604T054639_20200604T054831_T43RCP: "
                                      r"band file\(s\) \['B10'\] not found") as err:
    _build(tmp_path, "ssl_real_l2a", {"layout": "ssl4eo", "root": str(root),
                                      "levels": ["s2a"]}, bands=["B02", "B10"])
  assert "\n" not in str(err.value)
