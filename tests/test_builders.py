"""Builders on small GeoTIFFs written here: tiling, resampling, offsets, splits, metadata."""

import os

import numpy as np
import pytest
import rasterio

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from tests import rasters
from tests.helpers import BANDS, data_cfg, s2_cfg


def all_examples(builder):
  out = {}
  for split in builder.info.splits:
    ds = builder.as_data_source(split)
    out[split] = [ds[i] for i in range(len(ds))]
  return out


def test_product_folder_resampled_to_10m_with_georeference(tmp_path):
  prod = rasters.write_product(tmp_path / "p1", BANDS, size_10m=128)
  builder = datasets.prepare(s2_cfg(tmp_path, [prod]))
  ex = all_examples(builder)
  tiles = [e for split in ex.values() for e in split]
  assert len(tiles) == 16  # 128/32 squared, none dropped
  expected = np.array([rasters.band_value(i) for i in range(len(BANDS))], np.uint16)
  for e in tiles:
    assert e[contract.IMAGE].shape == (1, 32, 32, len(BANDS))
    assert e[contract.IMAGE].dtype == np.uint16
    # Constant bands stay exact through the 20 m / 60 m -> 10 m resampling.
    np.testing.assert_array_equal(e[contract.IMAGE][0], np.broadcast_to(expected, (32, 32, 11 + 1)))
    assert e[contract.VALID].all()
    # The tile transform is the scene transform moved by (col, row) pixels.
    x0, y0 = rasters.ORIGIN
    np.testing.assert_allclose(e[contract.TRANSFORM],
                               [x0 + 10 * e[contract.COL], 10, 0, y0 - 10 * e[contract.ROW], 0, -10])
    assert contract.as_text(e[contract.CRS]) == "EPSG:32633"
  meta = builder.info.metadata
  assert meta[contract.META_BANDS] == BANDS
  assert meta[contract.META_GSD] == 10
  np.testing.assert_allclose(meta[contract.META_MEAN], expected, rtol=1e-12)
  np.testing.assert_allclose(meta[contract.META_STD], 0, atol=1e-9)


def test_nodata_and_cloud_mask_drop_tiles_and_mark_invalid(tmp_path):
  # 40 nodata rows: tiles of the first row of tiles are all invalid (dropped); the second
  # row of tiles has 8/32 invalid rows = 25% (dropped at max_invalid=0.1, kept at 0.3).
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=128, nodata_rows=40,
                               cloud_rows=8)
  strict = all_examples(datasets.prepare(s2_cfg(tmp_path, [prod], max_invalid=0.1,
                                               split_fractions={"train": 1})))
  rows = sorted({int(e[contract.ROW]) for s in strict.values() for e in s})
  assert rows == [64]  # row 96 has the 8 cloudy rows (25%): dropped too
  loose = all_examples(datasets.prepare(data_cfg(
      tmp_path, config_name="loose", source="manual", products=[prod], bands=BANDS,
      tile_size=32, stride=32, block_tiles=1, max_invalid=0.3)))
  tiles = {(int(e[contract.ROW]), int(e[contract.COL])): e for s in loose.values() for e in s}
  assert sorted({r for r, _ in tiles}) == [32, 64, 96]
  t = tiles[(32, 0)]
  assert not t[contract.VALID][0, :8].any() and t[contract.VALID][0, 8:].all()
  assert (t[contract.IMAGE][0, :8] == 0).all()  # invalid pixels carry no stray values
  assert not tiles[(96, 0)][contract.VALID][0, -8:].any()


def test_baseline_04_offset_removed_and_recorded(tmp_path):
  name = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
  prod = rasters.write_product(tmp_path / name, BANDS, size_10m=64, offset=1000)
  builder = datasets.prepare(s2_cfg(tmp_path, [prod]))
  tiles = [e for s in all_examples(builder).values() for e in s]
  assert tiles[0][contract.IMAGE][0, 0, 0, 1] == rasters.band_value(1)
  assert tiles[0][contract.DATES].tolist() == [20220706]
  assert builder.info.metadata["offsets_removed"] == {name: 1000}
  # Explicitly off: the DNs stay as stored.
  kept = datasets.prepare(data_cfg(tmp_path, config_name="raw", source="manual",
                                   products=[prod], bands=BANDS, tile_size=32, stride=32,
                                   block_tiles=1, remove_offset=False))
  e = [e for s in all_examples(kept).values() for e in s][0]
  assert e[contract.IMAGE][0, 0, 0, 1] == rasters.band_value(1) + 1000


def test_time_series_stacks_dates_in_order(tmp_path):
  late = rasters.write_product(tmp_path / "S2B_MSIL1C_20210801T100000_N0301_X", BANDS,
                               size_10m=64, scale=2)
  early = rasters.write_product(tmp_path / "S2A_MSIL1C_20210301T100000_N0301_X", BANDS,
                                size_10m=64)
  builder = datasets.prepare(s2_cfg(tmp_path, [late, early], time_series=True,
                                    scene_id="footprint"))
  e = [e for s in all_examples(builder).values() for e in s][0]
  assert e[contract.IMAGE].shape == (2, 32, 32, len(BANDS))
  assert e[contract.DATES].tolist() == [20210301, 20210801]
  assert e[contract.IMAGE][1, 0, 0, 3] == 2 * e[contract.IMAGE][0, 0, 0, 3]
  assert contract.as_text(e[contract.SCENE_ID]) == "footprint"
  assert builder.info.metadata[contract.META_NUM_DATES] == 2


def test_multiband_geotiff_equals_product_folder(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=64, nodata_rows=5)
  with rasterio.Env():
    stack = np.stack([rasterio.open(os.path.join(prod, f"{b}.tif")).read(
        1, out_shape=(64, 64), resampling=rasterio.enums.Resampling.nearest) for b in BANDS])
  order = BANDS[::-1]  # a declared, non-default order
  tif = rasters.write_raster(tmp_path / "stack.tif", stack[::-1], 10)
  a = all_examples(datasets.prepare(s2_cfg(tmp_path, [prod], max_invalid=0.5)))
  b = all_examples(datasets.prepare(data_cfg(
      tmp_path, config_name="stack", source="manual", bands=BANDS, tile_size=32, stride=32,
      block_tiles=1, max_invalid=0.5,
      products=[dict(path=str(tif), band_order=order, product_id="p")])))
  ta = {(int(e["row"]), int(e["col"])): e for s in a.values() for e in s}
  tb = {(int(e["row"]), int(e["col"])): e for s in b.values() for e in s}
  assert ta.keys() == tb.keys() and len(ta) == 4
  for k in ta:
    np.testing.assert_array_equal(ta[k][contract.IMAGE], tb[k][contract.IMAGE])
    np.testing.assert_array_equal(ta[k][contract.VALID], tb[k][contract.VALID])


def test_spatial_split_never_shares_pixels_between_splits(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS[:4], size_10m=256)
  cfg = s2_cfg(tmp_path, [prod], bands=BANDS[:4], tile_size=32, stride=16, block_tiles=2,
               split_fractions={"train": 0.5, "validation": 0.5})
  ex = all_examples(datasets.prepare(cfg))
  assert len(ex["train"]) and len(ex["validation"])
  covered = {}
  for split, tiles in ex.items():
    m = np.zeros((256, 256), bool)
    for e in tiles:
      m[e["row"]:e["row"] + 32, e["col"]:e["col"] + 32] = True
    covered[split] = m
  assert not (covered["train"] & covered["validation"]).any()
  # Deterministic: the same seed gives the same split on a rebuild elsewhere.
  again = all_examples(datasets.prepare(data_cfg(
      tmp_path / "b", **cfg.builder.to_dict())))
  assert ({(e["row"], e["col"]) for e in again["validation"]} ==
          {(e["row"], e["col"]) for e in ex["validation"]})


def test_rebuild_is_noop_and_changed_params_are_refused(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=64)
  cfg = s2_cfg(tmp_path, [prod])
  first = datasets.prepare(cfg)
  stamp = os.path.getmtime(os.path.join(first.data_dir, "dataset_info.json"))
  datasets.prepare(cfg)
  assert os.path.getmtime(os.path.join(first.data_dir, "dataset_info.json")) == stamp
  cfg.builder.tile_size = 16
  with pytest.raises(DataError, match="tile_size: built 32, config 16"):
    datasets.prepare(cfg)


def test_landcover_labels_mapped_and_counted(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=64)
  raw = np.zeros((64, 64), np.int16)
  raw[:, 32:] = 7          # class 'forest'
  raw[:16] = -1            # nodata
  raw[16:20, :8] = 3       # not in the class map -> ignore
  label = rasters.write_raster(tmp_path / "label.tif", raw, 10, nodata=-1)
  cfg = data_cfg(tmp_path, name="landcover_tiles", scenes=[dict(images=[prod], label=str(label))],
                 classes=[["crop", 0], ["forest", [7, 8]]], bands=BANDS, tile_size=32,
                 stride=32, block_tiles=1, split_fractions={"train": 1.0})
  builder = datasets.prepare(cfg)
  tiles = {(int(e["row"]), int(e["col"])): e for e in all_examples(builder)["train"]}
  assert tiles[(0, 0)][contract.LABEL][:16].tolist() == [[255] * 32] * 16
  assert (tiles[(0, 0)][contract.LABEL][16:20, :8] == 255).all()
  assert (tiles[(0, 32)][contract.LABEL][16:] == 1).all()
  assert (tiles[(32, 0)][contract.LABEL] == 0).all()
  meta = builder.info.metadata
  assert meta[contract.META_CLASS_NAMES] == ["crop", "forest"]
  assert meta["class_pixel_counts"]["train"] == [32 * 32 + 16 * 32 - 32, 32 * 32 + 16 * 32]


def _landcover_cfg(tmp_path, prod, label, **kw):
  return data_cfg(tmp_path, name="landcover_tiles", config_name=kw.pop("config_name", "lc"),
                  scenes=[dict(images=[prod], label=str(label))], classes=[["a", 0], ["b", 1]],
                  bands=BANDS, tile_size=32, stride=32, block_tiles=1, **kw)


def test_label_on_another_crs_needs_allow_reproject(tmp_path):
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=64)
  # The same ground in UTM 33N expressed in WGS84 degrees (approximately).
  from rasterio.warp import transform_bounds
  left, bottom, right, top = transform_bounds("EPSG:32633", "EPSG:4326", 500000, 4599360,
                                              500640, 4600000)
  lab = np.ones((80, 80), np.uint8)
  label = tmp_path / "label_4326.tif"
  with rasterio.open(label, "w", driver="GTiff", width=80, height=80, count=1, dtype="uint8",
                     crs="EPSG:4326", nodata=255,
                     transform=rasterio.transform.from_bounds(left, bottom, right, top, 80, 80)) as ds:
    ds.write(lab[None])
  with pytest.raises(DataError) as err:
    datasets.prepare(_landcover_cfg(tmp_path, prod, label))
  msg = str(err.value)
  assert "label_4326.tif" in msg and "B01.tif" in msg or "B02.tif" in msg
  assert "EPSG:4326" in msg and "EPSG:32633" in msg and "allow_reproject" in msg
  assert not datasets.is_prepared(_landcover_cfg(tmp_path, prod, label))
  builder = datasets.prepare(_landcover_cfg(tmp_path, prod, label, allow_reproject=True,
                                            config_name="reproj"))
  labels = np.stack([e[contract.LABEL] for s in all_examples(builder).values() for e in s])
  assert (labels == 1).mean() > 0.95


def test_unknown_builder_param_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="unknown key 'tile_sise'"):
    datasets.make_builder(s2_cfg(tmp_path, [], tile_sise=3))


def test_splits_larger_than_the_shuffle_buffer_build_without_tensorflow(tmp_path, monkeypatch):
  """TFDS spills to temporary bucket files past its buffer; those must work without TF."""
  from tensorflow_datasets.core import shuffle
  from ee_jax.data import tfds_compat
  tfds_compat.install()
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 10_000)  # a few tiles
  prod = rasters.write_product(tmp_path / "p", BANDS, size_10m=128)
  builder = datasets.prepare(s2_cfg(tmp_path, [prod], split_fractions={"train": 1}))
  tiles = all_examples(builder)["train"]
  assert len(tiles) == 16
  assert sorted((int(e["row"]), int(e["col"])) for e in tiles) == [
      (r, c) for r in range(0, 128, 32) for c in range(0, 128, 32)]


def test_time_series_from_csv_manifest_with_dates(tmp_path):
  for name, scale in (("a", 1), ("b", 3)):
    rasters.write_product(tmp_path / name, BANDS, size_10m=64, scale=scale)
  manifest = tmp_path / "series.csv"
  manifest.write_text("path,date\nb,20210915\na,20210410\n")
  builder = datasets.prepare(s2_cfg(tmp_path, [], manifest=str(manifest), time_series=True))
  e = [e for s in all_examples(builder).values() for e in s][0]
  assert e[contract.DATES].tolist() == [20210410, 20210915]
  assert e[contract.IMAGE][1, 0, 0, 2] == 3 * e[contract.IMAGE][0, 0, 0, 2]
  bad = tmp_path / "bad.csv"
  bad.write_text("file,date\nb,20210915\n")
  with pytest.raises(DataError, match="bad.csv: entry 0 has no 'path'"):
    datasets.prepare(s2_cfg(tmp_path / "x", [], manifest=str(bad), time_series=True))
