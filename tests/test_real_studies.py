"""The study configs on real labelled samples in ../shared/data (configs/study_eolearn.py,
study_sen1floods11.py) built with `:smoke` and run as tiny studies, and the pre-training on
all the real unlabelled imagery (configs/pretrain_real.py) built."""

import json

import numpy as np
import pytest
import rasterio

from configs import _shared_data, defaults, study_eolearn, study_sen1floods11
from ee_jax import checkpoints
from ee_jax.data import contract, datasets
from ee_jax.study import run_study
from ee_jax.train.pretrain import dataset_metadata


def _tiny(c, tmp_path):
  c.data.data_dir = c.study.pretrain_data.data_dir = str(tmp_path / "tfds")
  c.train.steps = 2
  defaults.smoke_study(c)   # LP-FT: 1 head step of the 2
  return c


def _run(c, tmp_path):
  run_study(c, str(tmp_path / "study"))
  study = json.load(open(tmp_path / "study" / "study.json"))
  assert study["complete"]
  assert sorted({r["init"] for r in study["runs"]}) == ["pretrained", "random"]
  assert sorted({r["fraction"] for r in study["runs"]}) == [0.5, 1.0]
  text = open(tmp_path / "study" / "report.md").read()
  assert "pretrained mIoU" in text and "| 1/2 |" in text
  _, pre = checkpoints.load_params(str(tmp_path / "study" / "pretrain"))
  data = dataset_metadata(datasets.open_prepared(c.data))
  assert pre["bands"] == data["bands"] == list(_shared_data.COMMON_BANDS)
  assert pre["dataset"] != data["dataset"]  # the unlabelled build of the same imagery
  return datasets.open_prepared(c.data)


def _tiles(b, split):
  d = b.as_data_source(split)
  return [d[i] for i in range(len(d))]


def test_eolearn_smoke_study_on_the_labelled_time_series(shared_data, tmp_path):
  folder = shared_data / "eolearn_slovenia"
  c = _tiny(study_eolearn.get_config("smoke"), tmp_path)
  b = _run(c, tmp_path)
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 25, "validation": 5, "test": 6}
  assert b.info.metadata[contract.META_CLASS_NAMES] == [n for n, _ in study_eolearn.CLASSES]
  # One scene of the manifest's five dates, in date order, on LULC.tif's grid.
  e = _tiles(b, "train")[0]
  assert e[contract.IMAGE].shape == (5, 16, 16, 12)
  assert e[contract.DATES].tolist() == [20150711, 20150731, 20150820, 20150830, 20150909]
  r, c_ = int(e[contract.ROW]), int(e[contract.COL])
  window = rasterio.windows.Window(c_, r, 16, 16)
  with rasterio.open(folder / "s2l1c" / "S2_L1C_20150830.tif") as src:  # B08 is band 8
    np.testing.assert_array_equal(e[contract.IMAGE][3, ..., 7], src.read(8, window=window))
  with rasterio.open(folder / "LULC.tif") as src:
    raw = src.read(1, window=window)
  want = np.full(raw.shape, 255, np.uint8)
  for index, (_, value) in enumerate(study_eolearn.CLASSES):
    want[raw == value] = index
  np.testing.assert_array_equal(e[contract.LABEL], want)
  # The pre-training read the same five dates, without labels.
  pre = datasets.open_prepared(c.study.pretrain_data)
  assert "label" not in pre.info.features
  assert _tiles(pre, "train")[0][contract.IMAGE].shape == (5, 32, 32, 12)


def test_sen1floods11_smoke_study_on_the_chip(shared_data, tmp_path):
  c = _tiny(study_sen1floods11.get_config("smoke"), tmp_path)
  b = _run(c, tmp_path)
  assert sum(b.info.splits[s].num_examples for s in ("train", "validation", "test")) == 256
  e = _tiles(b, "test")[0]
  assert e[contract.IMAGE].shape == (1, 32, 32, 12)
  assert contract.as_text(e[contract.CRS]) == "EPSG:4326"
  assert set(np.unique(e[contract.LABEL])) <= {0, 1, 255}


@pytest.mark.parametrize("module", [study_eolearn, study_sen1floods11])
def test_real_study_configs_take_a_folder_and_name_a_missing_one(module, shared_data):
  name = "eolearn_slovenia" if module is study_eolearn else "sen1floods11"
  default = module.get_config("smoke")
  given = module.get_config(f"{shared_data / name},smoke")
  assert given.data.builder.scenes == default.data.builder.scenes
  with pytest.raises(ValueError, match=r"unknown argument '/no/such,smoke' .*: no folder "
                                       r"/no/such$"):
    module.get_config("/no/such,smoke")
