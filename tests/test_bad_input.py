"""Bad input: each case raises one clear error naming the file or key, and leaves nothing."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ee_jax.data import datasets
from ee_jax.errors import DataError
from tests import rasters
from tests.test_builders import BANDS, data_cfg, s2_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nothing_left(cfg):
  assert not datasets.is_prepared(cfg)
  assert not datasets.dataset_path(cfg).exists()


def test_missing_band_file_names_product_and_band(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64, skip=("B8A",))
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match=r"prod: band file\(s\) \['B8A'\] not found"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_truncated_geotiff_names_the_file_and_leaves_nothing(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  # A real, compressed, random-valued band, then cut in half.
  path = os.path.join(prod, "B04.tif")
  rng = np.random.default_rng(0)
  rasters.write_raster(path, rng.integers(1, 5000, (64, 64)).astype(np.uint16), 10,
                       compress="deflate", tiled=True, blockxsize=16, blockysize=16)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match="B04.tif.*(truncated|corrupt)"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_band_files_on_different_crs_are_refused(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  rasters.write_raster(os.path.join(prod, "B05.tif"), np.ones((32, 32), np.uint16), 20,
                       crs="EPSG:32634")
  with pytest.raises(DataError, match="different CRSs.*EPSG:3263[34].*B05.tif.*EPSG:32634"):
    datasets.prepare(s2_cfg(tmp_path, [prod]))


def test_band_files_with_different_extents_are_refused(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  x, y = rasters.ORIGIN
  rasters.write_raster(os.path.join(prod, "B03.tif"), np.ones((64, 64), np.uint16), 10,
                       origin=(x + 500, y))
  with pytest.raises(DataError, match="different extents.*B03.tif"):
    datasets.prepare(s2_cfg(tmp_path, [prod]))


def test_all_nodata_scene_has_no_valid_tiles(tmp_path):
  prod = rasters.write_product(tmp_path / "empty_scene", BANDS, size_10m=64, nodata_rows=64)
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match="no valid tiles.*empty_scene"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_multiband_file_missing_a_band(tmp_path):
  tif = rasters.write_raster(tmp_path / "three.tif", np.ones((3, 64, 64), np.uint16), 10)
  cfg = data_cfg(tmp_path, source="manual", bands=BANDS,
                 products=[dict(path=str(tif), band_order=["B02", "B03", "B04"])])
  with pytest.raises(DataError, match=r"three.tif: band\(s\) \['B01', .*not in this file"):
    datasets.prepare(cfg)


def _launch(*args, **kw):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args],
                        capture_output=True, text=True, cwd=REPO, **kw)


def test_unknown_config_key_is_one_clear_line(tmp_path):
  proc = _launch("--mode=build", "--config=configs/pretrain_s2.py",
                 f"--config.data.data_dir={tmp_path}", "--config.data.builder.tile_sise=32")
  assert proc.returncode != 0
  assert "unknown config key 'tile_sise'" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "s2_tiles").exists()


def test_killed_build_never_looks_complete_and_rebuild_works(tmp_path):
  prod = rasters.write_product(tmp_path / "big", BANDS, size_10m=1536)
  cfg = s2_cfg(tmp_path, [prod], block_tiles=4)
  script = ("import sys, ml_collections; from ee_jax.data import datasets; "
            f"datasets.prepare(ml_collections.ConfigDict({cfg.to_dict()!r}))")
  proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  parent = datasets.dataset_path(cfg).parent
  deadline = time.time() + 60
  while time.time() < deadline and not (parent.exists() and any(parent.iterdir())):
    time.sleep(0.05)
  time.sleep(0.5)  # well into writing tiles
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not datasets.is_prepared(cfg)
  assert not datasets.dataset_path(cfg).exists()
  builder = datasets.prepare(cfg)  # a fresh build completes despite the leftovers
  assert builder.info.splits["train"].num_examples > 0
