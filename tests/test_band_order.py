"""`band_order` once for a dataset (`data.builder.band_order`) instead of per image."""

import ml_collections
import numpy as np
import pytest

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from tests import rasters

BANDS = ["B02", "B03", "B04", "B08"]
FILE_ORDER = ["B08", "B04", "B03", "B02"]   # how the GeoTIFFs hold them (no descriptions)


def stack(tmp_path, name, seed, order=FILE_ORDER):
  """A 64 x 64 GeoTIFF without band descriptions; band b holds 1000 * (index of b in
  BANDS + 1) + noise, so a wrong order shows in the values."""
  rng = np.random.default_rng(seed)
  planes = [1000 * (BANDS.index(b) + 1) + rng.integers(0, 100, (64, 64)) for b in order]
  return str(rasters.write_raster(tmp_path / name, np.stack(planes).astype(np.uint16), 10))


def landcover_cfg(tmp_path, config_name, images, **builder):
  label = rasters.write_raster(tmp_path / "label.tif", np.zeros((64, 64), np.uint8), 10)
  return ml_collections.ConfigDict(dict(
      name="landcover_tiles", config_name=config_name, data_dir=str(tmp_path / "tfds"),
      builder=ml_collections.ConfigDict(dict(
          scenes=[dict(images=images, label=str(label))], classes=[["a", 0]], bands=BANDS,
          tile_size=32, stride=32, block_tiles=1, split_fractions={"train": 1.0},
          **builder))))


def images_of(builder):
  ds = builder.as_data_source("train")
  return {(int(e["row"]), int(e["col"])): e[contract.IMAGE] for e in (ds[i] for i in
                                                                    range(len(ds)))}


def test_dataset_band_order_applies_to_every_image_without_its_own(tmp_path):
  a, b = stack(tmp_path, "a.tif", 0), stack(tmp_path, "b.tif", 1)
  dated = [{"path": a, "date": 20210510}, {"path": b, "date": 20210610}]
  per_image = datasets.prepare(landcover_cfg(
      tmp_path, "per_image", [{**d, "band_order": FILE_ORDER} for d in dated]))
  once = datasets.prepare(landcover_cfg(tmp_path, "once", dated, band_order=FILE_ORDER))
  x, y = images_of(per_image), images_of(once)
  assert x.keys() == y.keys() and len(x) == 4
  for k in x:
    np.testing.assert_array_equal(x[k], y[k])
    assert x[k].shape == (2, 32, 32, 4)
    # Bands in BANDS order: band i is about 1000 * (i + 1).
    np.testing.assert_array_equal(x[k].min(axis=(0, 1, 2)) // 1000, [1, 2, 3, 4])
  assert once.info.metadata[contract.META_PARAMS]["band_order"] == FILE_ORDER

  # An image's own band_order wins over the dataset's.
  c = stack(tmp_path, "c.tif", 2, order=BANDS)
  mixed = datasets.prepare(landcover_cfg(
      tmp_path, "mixed", [dated[0], {"path": c, "date": 20210710, "band_order": BANDS}],
      band_order="B08,B04,B03,B02"))
  for img in images_of(mixed).values():
    for t in range(2):
      np.testing.assert_array_equal(img[t].min(axis=(0, 1)) // 1000, [1, 2, 3, 4])


def test_s2_tiles_dataset_band_order_and_errors(tmp_path):
  a = stack(tmp_path, "a.tif", 0)
  cfg = ml_collections.ConfigDict(dict(
      name="s2_tiles", config_name="s2", data_dir=str(tmp_path / "tfds"),
      builder=ml_collections.ConfigDict(dict(
          source="manual", products=[a], bands=BANDS, tile_size=32, stride=32,
          block_tiles=1, split_fractions={"train": 1.0}))))
  with pytest.raises(DataError, match="without descriptions; declare their order"):
    datasets.prepare(cfg)
  cfg.builder.band_order = ("B08", "B04", "B03", "B02")
  for img in images_of(datasets.prepare(cfg)).values():
    np.testing.assert_array_equal(img[0].min(axis=(0, 1)) // 1000, [1, 2, 3, 4])
  cfg.config_name = "short"
  cfg.builder.band_order = ("B08", "B04", "B03")
  with pytest.raises(DataError, match="band_order names 3 bands but the file has 4"):
    datasets.prepare(cfg)
  cfg.builder.band_order = ("B08", "B08", "B03", "B02")
  with pytest.raises(ConfigError, match="band_order names a band twice"):
    datasets.prepare(cfg)


def test_empty_band_order_is_not_recorded(tmp_path):
  """Datasets built before the key existed still match a config that leaves it empty."""
  from tfds_builders.s2_tiles.builder import S2Tiles  # pylint: disable=import-outside-toplevel
  assert "band_order" not in S2Tiles(params={}, data_dir=str(tmp_path)).params
