"""Label fractions: determinism, nesting, counts, class balance, histograms, the workdir record."""

import json
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.data import label_fractions as lf
from ee_jax.data import pipeline
from ee_jax.errors import ConfigError, DataError
from tfds_builders.common import TileBuilder

SIZES = [1, 2, 3, 7, 100, 128, 500, 513]


@pytest.mark.parametrize("n", SIZES)
def test_counts_nesting_and_determinism(n):
  for seed in (0, 1):
    previous = None
    for k in range(7, -1, -1):  # 1/128 up to 1
      f = 2.0 ** -k
      idx = lf.fraction_indices(n, f, seed)
      assert idx.dtype == np.int64 and len(idx) == max(1, math.ceil(f * n))
      assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < n  # sorted, distinct
      np.testing.assert_array_equal(idx, lf.fraction_indices(n, f, seed))  # deterministic
      if previous is not None:
        assert set(previous.tolist()) <= set(idx.tolist()), (n, seed, k)  # nested
      previous = idx
    np.testing.assert_array_equal(previous, np.arange(n))  # fraction 1: every tile


def test_seeds_differ_and_any_fraction_in_range_is_accepted():
  assert not np.array_equal(lf.fraction_indices(512, 1 / 16, 0),
                            lf.fraction_indices(512, 1 / 16, 1))
  assert len(lf.fraction_indices(10, 0.3, 0)) == 3  # not 4 from 0.3 * 10 = 3.0000000000000004
  assert len(lf.fraction_indices(10, 0.31, 0)) == 4
  assert set(lf.fraction_indices(10, 0.3, 5)) <= set(lf.fraction_indices(10, 0.75, 5))
  assert lf.FRACTIONS[0] == 1 and lf.FRACTIONS[-1] == 1 / 128 and len(lf.FRACTIONS) == 8
  assert lf.subset_size(512, 1 / 128) == 4


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), "half", None])
def test_bad_fraction_is_a_config_error(fraction):
  with pytest.raises(ConfigError, match="label fraction"):
    lf.fraction_indices(100, fraction, 0)


def test_class_balanced_needs_histograms_and_checks_them():
  with pytest.raises(ConfigError, match="histograms"):
    lf.fraction_indices(100, 0.5, 0, class_balanced=True)
  with pytest.raises(ConfigError, match="num_tiles, num_classes"):
    lf.fraction_indices(np.zeros(5), 0.5, 0, class_balanced=True)
  with pytest.raises(ConfigError, match="negative"):
    lf.fraction_indices(-np.ones((5, 2)), 0.5, 0, class_balanced=True)


def rare_class_histograms(n=128, rare_tiles=2, seed=0):
  """n tiles of 100 labelled pixels, classes 0 and 1 everywhere, class 2 (5 pixels) in
  `rare_tiles` tiles only."""
  rng = np.random.default_rng(seed)
  a = rng.integers(30, 70, n)
  hist = np.stack([a, 100 - a, np.zeros(n, int)], axis=1)
  rare = rng.choice(n, rare_tiles, replace=False)
  hist[rare, 2] = 5
  hist[rare, 0] -= 5
  return hist, set(rare.tolist())


def test_class_balanced_covers_a_rare_class_where_random_does_not():
  hist, rare = rare_class_histograms()
  balanced_hits = random_hits = 0
  for seed in range(20):
    for f in (1 / 128, 1 / 64):
      balanced_hits += bool(rare & set(lf.fraction_indices(hist, f, seed, class_balanced=True)))
      random_hits += bool(rare & set(lf.fraction_indices(len(hist), f, seed)))
  assert balanced_hits == 40  # always, from a single tile on
  assert random_hits <= 8     # expected ~ 40 * 2/128 + 20 * 2/128 ~ 1.9


@pytest.mark.parametrize("seed", [0, 3])
def test_class_balanced_is_nested_deterministic_and_seeded(seed):
  hist, _ = rare_class_histograms(n=200, rare_tiles=7, seed=seed)
  hist[:50] = [60, 40, 0]  # identical tiles: ties, broken by the seed
  previous = None
  for k in range(7, -1, -1):
    idx = lf.fraction_indices(hist, 2.0 ** -k, seed, class_balanced=True)
    assert len(idx) == max(1, math.ceil(200 * 2.0 ** -k))
    np.testing.assert_array_equal(idx, lf.fraction_indices(hist, 2.0 ** -k, seed,
                                                            class_balanced=True))
    if previous is not None:
      assert set(previous.tolist()) <= set(idx.tolist())
    previous = idx
  order = lf.tile_order(hist, seed, class_balanced=True)
  assert sorted(order.tolist()) == list(range(200))  # a full ordering
  other = lf.tile_order(hist, seed + 1, class_balanced=True)
  assert not np.array_equal(order, other)


def test_class_balanced_greedy_step_and_balance():
  rng = np.random.default_rng(1)
  n, k = 60, 5
  # Class c has about 2^-c of the pixels; the last class is rare.
  weights = 2.0 ** -np.arange(k)
  hist = np.stack([rng.multinomial(400, rng.dirichlet(weights * 2)) for _ in range(n)])
  hist[:, -1] = np.where(rng.random(n) < 0.1, hist[:, -1] + 3, 0)
  order = lf.tile_order(hist, 0, class_balanced=True, count=20)
  covered = np.zeros(k)
  for t in order:  # each pick maximises sum_c log1p(h_c / (1 + C_c)) among the rest
    gains = np.log1p(hist / (covered + 1)).sum(axis=1)
    gains[list(order[:list(order).index(t)])] = -1
    assert gains[t] == pytest.approx(gains.max(), rel=1e-9)
    covered += hist[t]
  # Every class with pixels is present within the first k picks.
  assert (hist[order[:k]].sum(axis=0) > 0).all()
  # Closer to uniform than a random subset of the same size (share of the rarest class).
  share = lambda idx: hist[idx].sum(0).min() / hist[idx].sum()  # noqa: E731
  assert share(order[:8]) > share(lf.tile_order(n, 0)[:8])


def test_tiles_without_labels_come_last():
  hist = np.array([[0, 0], [5, 5], [0, 0], [1, 9]])
  order = lf.tile_order(hist, 0, class_balanced=True)
  assert set(order[:2].tolist()) == {1, 3}


# --------------------------------------------------------------------------------------
# Reading a prepared dataset, and the workdir record.
# --------------------------------------------------------------------------------------
TILE = 4
NUM_TRAIN = 11


def toy_label(i, bad):
  label = np.full((TILE, TILE), i % 3, np.uint8)
  label[0, : i % 4] = contract.IGNORE_INDEX
  if i == 7:
    label[1, :2] = 2 if not bad else 9
  return label


class FractionToyTiles(TileBuilder, skip_registration=True):
  DEFAULT_PARAMS = {"bad": False}
  LABELLED = True

  def _split_names(self):
    return ["train"]

  def _tile_layout(self):
    return {"num_dates": 1, "tile_size": TILE, "bands": ["B1"], "gsd": 10.0,
            "class_names": ["a", "b", "c"]}

  def _tiles(self, split):
    for i in range(NUM_TRAIN):
      yield f"t{i:02d}", {
          contract.IMAGE: np.full((1, TILE, TILE, 1), i, np.uint16),
          contract.VALID: np.ones((1, TILE, TILE), bool),
          contract.DATES: np.array([20200101], np.int32),
          contract.LABEL: toy_label(i, self.params["bad"]),
          contract.CRS: "EPSG:32618",
          contract.TRANSFORM: np.array([0.0, 10, 0, 0, 0, -10]),
          contract.SCENE_ID: f"scene-{i % 2}",
          contract.ROW: np.int32(i),
          contract.COL: np.int32(100 + i),
      }


def build(tmp_path, bad=False):
  builder = FractionToyTiles(params={"bad": bad}, data_dir=str(tmp_path),
                             file_format="array_record")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return tfds.builder_from_directory(str(builder.data_dir))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  return build(tmp_path_factory.mktemp("tfds"))


def test_class_histograms_of_a_dataset(toy):
  source = toy.as_data_source("train")
  want = np.zeros((NUM_TRAIN, 3), np.int64)
  for j in range(NUM_TRAIN):
    label = source[j][contract.LABEL]
    want[j] = np.bincount(label[label != contract.IGNORE_INDEX], minlength=3)
  for batch_size in (1, 4, 64):  # padding of the last batch must not count
    hist = lf.class_histograms(toy, "train", batch_size=batch_size)
    np.testing.assert_array_equal(hist, want)
  np.testing.assert_array_equal(lf.class_histograms(toy.data_dir, "train", 3, 255), want)
  assert hist.sum(0).tolist() == toy.info.metadata["class_pixel_counts"]["train"]
  # A 2-class view: labels 2 are then out of range.
  with pytest.raises(DataError, match="label value 2"):
    lf.class_histograms(toy, "train", num_classes=2)


def test_bad_label_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match=r"tile \d+ has label value 9"):
    lf.class_histograms(build(tmp_path, bad=True), "train")


def test_tile_ids_and_write_selection(toy, tmp_path):
  hist = lf.class_histograms(toy, "train")
  idx = lf.fraction_indices(hist, 0.25, 0, class_balanced=True)
  tiles = lf.tile_ids(toy, "train", idx)
  source = toy.as_data_source("train")
  for t in tiles:
    example = source[t["index"]]
    assert t["scene_id"] == contract.as_text(example[contract.SCENE_ID])
    assert (t["row"], t["col"]) == (int(example[contract.ROW]), int(example[contract.COL]))
  workdir = tmp_path / "run"
  meta = {"fraction": 0.25, "seed": 0, "class_balanced": True, "split": "train",
          "split_size": NUM_TRAIN}
  path = lf.write_selection(workdir, idx[::-1], meta, tiles=tiles)
  assert path == str(workdir / lf.SELECTION_FILE)
  record = json.loads((workdir / "label_fraction.json").read_text())
  assert record == {**meta, "count": 3, "indices": idx.tolist(), "tiles": tiles}
  assert lf.read_selection(workdir) == record
  lf.write_selection(workdir, idx, meta, tiles=tiles)  # same selection again: fine (resume)
  other = lf.fraction_indices(NUM_TRAIN, 0.25, 1)
  with pytest.raises(ConfigError, match="different selection"):
    lf.write_selection(workdir, other, {**meta, "seed": 1})
  lf.write_selection(workdir, other, {**meta, "seed": 1}, overwrite=True)
  assert lf.read_selection(workdir)["indices"] == other.tolist()
  assert lf.read_selection(tmp_path / "nothing") is None
  with pytest.raises(ValueError, match="exactly the selected"):
    lf.write_selection(tmp_path / "x", idx, meta, tiles=tiles[:1])


def test_selection_trains_through_the_pipeline(toy):
  idx = lf.fraction_indices(NUM_TRAIN, 1 / 8, 2)  # 2 tiles; global batch 4 (2 devices)
  source = toy.as_data_source("train")
  with pipeline.train_iterator(toy, "train", per_device_batch=2, seed=0, num_steps=3,
                               indices=idx, keys=(contract.IMAGE,)) as it:
    for batch in it:
      index = batch["index"].reshape(-1)
      assert set(index.tolist()) == set(idx.tolist())
      want = np.stack([source[int(i)][contract.IMAGE] for i in index])
      np.testing.assert_array_equal(batch["image"].reshape(want.shape), want)
