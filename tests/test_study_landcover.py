"""The label-fraction study on a user's own rasters (configs/study_landcover.py), end to end:
pre-training on an s2_tiles build of one raster, the study on a landcover_tiles build of
another, each arm normalised as its weights expect."""

import json
import os

import numpy as np
import pytest

from configs import defaults, study_landcover
from ee_jax import checkpoints
from ee_jax.errors import DataError
from ee_jax.study import run_study
from ee_jax.train.pretrain import dataset_metadata
from ee_jax.data import datasets
from tests import rasters

BANDS = ["B02", "B03", "B04", "B08"]
ORDER = ["B08", "B04", "B03", "B02"]  # how the GeoTIFFs store them: declared once


def _image(path, size, seed, level):
  """A stacked GeoTIFF (ORDER) of noisy DNs around `level`; other levels, other statistics."""
  rng = np.random.default_rng(seed)
  a = rng.integers(level, level + 500, (len(ORDER), size, size)).astype(np.uint16)
  return rasters.write_raster(path, a, 10)


@pytest.fixture(scope="module")
def area(tmp_path_factory):
  folder = tmp_path_factory.mktemp("area")
  _image(folder / "farm.tif", 160, 0, 1000)
  label = np.zeros((160, 160), np.int16)
  label[:, 80:] = 2
  label[::7] = 5  # not in the class map: ignored
  rasters.write_raster(folder / "farm_label.tif", label, 10, nodata=-1)
  os.makedirs(folder / "unlabelled")
  _image(folder / "unlabelled" / "elsewhere.tif", 128, 1, 3000)  # other imagery
  with open(folder / "dataset.json", "w") as f:
    json.dump({"bands": BANDS, "band_order": ORDER,
               "classes": [["crop", 0], ["forest", 2]]}, f)
  return folder


def _config(area, tmp_path):
  c = study_landcover.get_config(f"{area},smoke")
  c.data.data_dir = c.study.pretrain_data.data_dir = str(tmp_path / "tfds")
  c.train.steps = 2
  defaults.smoke_study(c)   # the default recipe, LP-FT: 1 head step of the 2
  return c


def test_smoke_study_from_a_folder_of_rasters(area, tmp_path):
  c = _config(area, tmp_path)
  run_study(c, str(tmp_path / "study"))
  text = open(tmp_path / "study" / "report.md").read()
  assert "pretrained mIoU" in text and "random mIoU" in text
  assert "| 1 |" in text and "| 1/2 |" in text
  study = json.load(open(tmp_path / "study" / "study.json"))
  assert sorted({r["init"] for r in study["runs"]}) == ["pretrained", "random"]
  # The pretrained arm normalises with the pre-training's statistics (other imagery: a mean
  # near 3250), the random arm with the labelled dataset's own (near 1250).
  _, pre = checkpoints.load_params(str(tmp_path / "study" / "pretrain"))
  data = dataset_metadata(datasets.open_prepared(c.data))
  assert pre["dataset"] != data["dataset"] and pre["bands"] == data["bands"] == BANDS
  np.testing.assert_allclose(pre["mean"], 3250, rtol=0.01)
  np.testing.assert_allclose(data["mean"], 1250, rtol=0.01)
  for run in study["runs"]:
    _, meta = checkpoints.load_params(run["workdir"])
    want = pre if run["init"] == "pretrained" else data
    np.testing.assert_allclose(meta["mean"], want["mean"])
    np.testing.assert_allclose(meta["std"], want["std"])


def test_band_list_mismatch_is_an_error_naming_both_lists(area, tmp_path):
  c = _config(area, tmp_path)
  c.study.pretrain_data.builder.bands = BANDS[:3]
  with pytest.raises(DataError, match=r"band list mismatch: .*\['B02', 'B03', 'B04'\].*"
                                      r"\['B02', 'B03', 'B04', 'B08'\]"):
    run_study(c, str(tmp_path / "study"))
  assert not os.path.exists(tmp_path / "study" / "runs")  # refused before any fine-tuning
