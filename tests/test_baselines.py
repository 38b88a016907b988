"""Classical baselines (ee_jax/baselines): features by hand, each classifier on a separable
problem, which pixels are trained on and scored, and the study's baseline rows."""

import json
import os

import numpy as np
import pytest

from ee_jax import baselines, metrics, report
from ee_jax.baselines import features, runner
from ee_jax.errors import ConfigError
from ee_jax.study import run_study
from tests.helpers import tiny_study_config


def test_3x3_mean_replicates_the_edge():
  f = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  s = features.smoothed(f)
  # Corner (0, 0): rows and columns (0, 0, 1) -> 4 x f00 + 2 x f01 + 2 x f10 + f11.
  assert s[0, 0, 0, 0] == pytest.approx((4 * 0 + 2 * 1 + 2 * 3 + 4) / 9)
  assert s[0, 1, 1, 0] == pytest.approx(4.0)                  # the centre: the plain mean
  assert s[0, 0, 1, 0] == pytest.approx((2 * (0 + 1 + 2) + 3 + 4 + 5) / 9)  # an edge: row 0 twice


def test_indices_where_their_bands_exist_and_nothing_otherwise():
  bands = ["B03", "B04", "B08"]
  image = np.zeros((1, 2, 1, 1, 3), np.uint16)               # N, T, H, W, C
  image[0, 0, 0, 0] = [500, 1000, 3000]
  image[0, 1, 0, 0] = [9, 9, 9]
  valid = np.array([True, False]).reshape(1, 2, 1, 1)         # date 1 unobserved
  assert features.available_indices(bands) == ["ndvi", "ndwi"]  # no B11: no NDBI
  f = features.pixel_features(image, valid, np.zeros(3), np.ones(3), bands, indices=True)
  assert f.shape == (1, 1, 1, 2 * 3 + 2 * 3 + 2 * 2)          # bands, 3x3 mean, 2 indices x 2 dates
  ndvi, ndwi = (3000 - 1000) / 4000, (500 - 3000) / 3500
  np.testing.assert_allclose(f[0, 0, 0, -4:], [ndvi, ndwi, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(f[0, 0, 0, :6], [500, 1000, 3000, 0, 0, 0])  # nodata date at 0
  assert features.available_indices(["B02", "B03"]) == []
  plain = features.pixel_features(image[..., :2], valid, np.zeros(2), np.ones(2),
                                  ["B02", "B03"], indices=True)
  assert plain.shape[-1] == 2 * 2 * 2                        # no index column at all


@pytest.mark.parametrize("name", ["linear", "lightgbm"])
def test_each_classifier_separates_a_separable_problem(name):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 60).astype(np.int32)
  x = (np.eye(3)[y] * 4 + 0.1 * rng.normal(size=(len(y), 3))).astype(np.float32)
  x = np.concatenate([x, rng.normal(size=(len(y), 2)).astype(np.float32)], -1)  # noise
  predict = baselines.get(name).fit(x, y, 3, seed=0)
  cm = np.asarray(metrics.confusion_matrix(predict(x), y, None, 3, 255))
  assert metrics.segmentation_scores(cm)["miou"] == 1.0       # the classes are apart by construction


def test_unknown_baseline_is_one_error_naming_the_known(labelled_data_dir, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.baselines = ("linear", "svm")
  with pytest.raises(ConfigError, match=r"unknown 'svm'; known: \['lightgbm', 'linear'\]"):
    run_study(c, str(tmp_path))
  assert not os.listdir(tmp_path)                            # refused before any work


def _tiles():
  """Two 1 x 2 x 2 tiles, 1 date, 1 band whose value is the class; with ignore and
  unobserved pixels that would be class 2 if read."""
  label = np.array([[[0, 1], [255, 2]], [[1, 1], [0, 2]]], np.uint8)
  valid = np.ones((2, 1, 2, 2), bool)
  valid[1, 0, 1, 1] = False                                  # tile 1's class-2 pixel unobserved
  image = np.where(label == 255, 2, label)[:, None, :, :, None].astype(np.uint16)
  image[1, 0, 1, 1, 0] = 2
  f = image[:, 0].astype(np.float32)                         # [N, H, W, 1]
  return f, label, features.counted(label, valid, 3, 255)


def test_ignore_and_unobserved_pixels_are_neither_trained_on_nor_scored():
  f, label, keep = _tiles()
  assert keep.sum() == 6
  x, y = runner.sample_pixels([(f, label, keep)], seed=0)
  assert sorted(y.tolist()) == [0, 0, 1, 1, 1, 2]           # no 255, one class-2 pixel only
  np.testing.assert_array_equal(x[:, 0], y)                  # each row is its own pixel's
  cm = runner.confusion(lambda v: np.zeros(len(v), int), [(f, label, keep)], 3, 255)
  # Everything predicted class 0: truth counts in column 0; the ignore pixel and the
  # unobserved class-2 pixel are nowhere.
  np.testing.assert_array_equal(cm, [[2, 0, 0], [3, 0, 0], [1, 0, 0]])


def test_pixels_per_class_are_capped_with_the_seed():
  f, label, keep = _tiles()
  x, y = runner.sample_pixels([(f[:1], label[:1], keep[:1]), (f[1:], label[1:], keep[1:])],
                              seed=3, cap=2)
  assert np.bincount(y).tolist() == [2, 2, 1]
  again = runner.sample_pixels([(f, label, keep)], seed=3, cap=2)[1]
  assert len(again) == 5


BASE_RUNS = [{"fraction": 0.25, "init": i, "seed": s, "miou": m, "oa": m}
             for i, s, m in [("pretrained", 0, 0.60), ("pretrained", 1, 0.62),
                             ("random", 0, 0.50), ("random", 1, 0.54)]]
CLASSICAL = [{"fraction": 0.25, "baseline": b, "seed": s, "miou": m, "oa": m}
             for b, s, m in [("linear", 0, 0.40), ("linear", 1, 0.44),
                             ("lightgbm", 0, 0.50), ("lightgbm", 1, 0.51)]]


def test_best_deep_arm_against_best_baseline_hand_computed():
  row = report.summarise(BASE_RUNS, CLASSICAL)[0]
  c = row["deep_vs_classical"]
  assert (c["deep"], c["classical"]) == ("pretrained", "lightgbm")
  assert c["per_seed"] == pytest.approx({"0": 10.0, "1": 11.0})
  # mean 10.5, std 0.707, se 0.5: |10.5| > 2 x 0.5 -> beyond noise.
  assert c["mean"] == pytest.approx(10.5) and c["within_noise"] is False
  assert report.comparison_line(row) == (
      "- 1/4: the best deep arm (pretrained, 61.0) beats the best classical baseline "
      "(lightgbm, 50.5) beyond noise: +10.5 ± 0.7 points (2 seeds).")
  assert row["baselines"]["linear"]["miou"]["mean"] == pytest.approx(42.0)


def test_plot_draws_a_dashed_line_per_baseline():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  runs = BASE_RUNS + [dict(r, fraction=1.0) for r in BASE_RUNS]
  classical = CLASSICAL + [dict(r, fraction=1.0) for r in CLASSICAL]
  fig, ax = plt.subplots()
  report.draw(ax, report.summarise(runs, classical))
  handles, labels = ax.get_legend_handles_labels()   # error-bar containers: 2 seeds
  styles = {label: h.lines[0].get_linestyle() for h, label in zip(handles, labels)}
  plt.close(fig)
  assert styles["lightgbm"] == styles["linear"] == "--"
  assert styles["random init"] == "-"


def test_smoke_study_adds_baseline_rows_on_the_deep_runs_tiles(labelled_data_dir, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.inits = ("random",)                                # no pre-training: faster
  c.study.fractions = (0.25,)
  run_study(c, str(tmp_path))
  study = json.load(open(tmp_path / "study.json"))
  assert sorted(b["baseline"] for b in study["baselines"]) == ["lightgbm", "linear"]
  for b in study["baselines"]:
    assert 0 < b["miou"] <= 1
    result = json.load(open(os.path.join(b["workdir"], "eval.json")))
    assert {"miou", "oa", "kappa", "per_class_iou", "per_class_f1"} <= set(result)
    assert b["kappa"] == result["kappa"] and -1 <= b["kappa"] <= 1
  # The same labelled tiles as the deep run of that fraction and seed.
  deep = json.load(open(tmp_path / "runs" / "frac0.25_random_seed0" / "label_fraction.json"))
  for name in ("linear", "lightgbm"):
    mine = json.load(open(tmp_path / "runs" / f"frac0.25_{name}_seed0" / "label_fraction.json"))
    assert mine["indices"] == deep["indices"] and len(mine["indices"]) == 8
  text = open(tmp_path / "report.md").read()
  assert "## Classical baselines" in text and "| fraction | lightgbm mIoU | linear mIoU |" in text
  assert "| lightgbm kappa | linear kappa |" in text
  assert "- 1/4: the best deep arm (random" in text and "1 seed: not judged" in text
  # A rerun reuses the baselines' eval.json.
  path = tmp_path / "runs" / "frac0.25_lightgbm_seed0" / "eval.json"
  stamp = os.path.getmtime(path)
  run_study(c, str(tmp_path))
  assert os.path.getmtime(path) == stamp


def test_lightgbm_fits_when_only_one_class_has_pixels():
  x = np.arange(40, dtype=np.float32).reshape(20, 2)
  predict = baselines.get("lightgbm").fit(x, np.full(20, 2, np.int32), 3, seed=0)
  assert (predict(x) == 2).all()


# The pre-trained embedding beside the pixels (study.embedding_baselines).

EMBEDDED = [{"fraction": 0.25, "baseline": b, "seed": s, "miou": m, "oa": m}
            for b, s, m in [("lightgbm", 0, 0.66), ("lightgbm", 1, 0.64)]]


def test_embedding_baseline_gains_and_with_vs_without_hand_computed():
  row = report.summarise(BASE_RUNS, CLASSICAL, EMBEDDED)[0]
  gain = row["embedding_baselines"]["lightgbm"]["gain_over_pixels"]
  # lightgbm + pretrained (66, 64) - lightgbm on the pixels (50, 51), per seed.
  assert gain["per_seed"] == pytest.approx({"0": 16.0, "1": 13.0})
  assert gain["mean"] == pytest.approx(14.5) and gain["within_noise"] is False
  # Best with the pre-training: lightgbm+pretrained (65.0) over pretrained (61.0); best
  # without: random (52.0) over lightgbm (50.5) and linear (42.0).
  c = row["with_vs_without"]
  assert (c["with"], c["without"]) == ("lightgbm+pretrained", "random")
  assert c["per_seed"] == pytest.approx({"0": 16.0, "1": 10.0})
  # mean 13, std 4.24, se 3: |13| > 2 x 3 -> beyond noise.
  assert c["mean"] == pytest.approx(13.0) and c["within_noise"] is False
  assert report.with_without_line(row) == (
      "- 1/4: the best with the pre-training (lightgbm+pretrained, 65.0) beats the best "
      "without it (random, 52.0) beyond noise: +13.0 ± 4.2 points (2 seeds).")
  # The embedding baseline is never "classical": the deep-vs-classical pair is unchanged.
  assert row["deep_vs_classical"]["classical"] == "lightgbm"
  assert row["deep_vs_classical"]["mean"] == pytest.approx(10.5)
  table = report.embedding_table([row])
  assert "| 1/4 | 65.0 ± 1.4 | 65.0 ± 1.4 | +14.5 ± 2.1 | beyond noise (2 seeds) |" in table


def test_plot_draws_the_embedding_baseline_dotted_in_its_classifiers_colour():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots()
  report.draw(ax, report.summarise(BASE_RUNS, CLASSICAL, EMBEDDED))
  handles, labels = ax.get_legend_handles_labels()
  lines = {label: h.lines[0] for h, label in zip(handles, labels)}
  plt.close(fig)
  assert lines["lightgbm + pretrained embedding"].get_linestyle() == ":"
  assert lines["lightgbm + pretrained embedding"].get_color() == lines["lightgbm"].get_color()


def test_embedding_baseline_fits_the_same_pixels_with_the_checkpoints_embedding_beside(
    labelled_data_dir, pretrained, tmp_path, monkeypatch):
  """Paired exactly with the classifier on the pixels alone: the same sampled pixels, in
  the same order, then the checkpoint's embedding of each of them and its 3x3 mean."""
  from ee_jax.baselines import embedding, linear  # pylint: disable=import-outside-toplevel
  from ee_jax.data import contract, datasets, pipeline  # pylint: disable=import-outside-toplevel
  from ee_jax.study import run_config  # pylint: disable=import-outside-toplevel
  seen = []
  fit = linear.fit
  monkeypatch.setattr(linear, "fit", lambda x, *a: seen.append(x) or fit(x, *a))
  c = run_config(tiny_study_config(labelled_data_dir), 0.25, "random", 0, "", None, "lp_ft")
  plain = runner.run_baseline(c, "linear", str(tmp_path / "plain"))
  embedded = runner.run_baseline(c, "linear", str(tmp_path / "embedded"),
                                 embedding_from=pretrained)
  x_plain, x_embedded = seen
  d = (x_embedded.shape[1] - x_plain.shape[1]) // 2
  assert d > 0 and embedded["num_features"] == plain["num_features"] + 2 * d
  assert embedded["train_pixels_per_class"] == plain["train_pixels_per_class"]
  np.testing.assert_array_equal(x_embedded[:, :x_plain.shape[1]], x_plain)
  assert embedded["embedding_from"] == pretrained and plain["embedding_from"] is None
  # Each row's embedding columns are the embedding of some pixel of the labelled tiles.
  builder = datasets.open_prepared(c.data)
  tiles = json.load(open(tmp_path / "embedded" / "label_fraction.json"))["indices"]
  b = pipeline.read_examples(builder, c.data.train_split, np.asarray(tiles),
                             (contract.IMAGE, contract.VALID))
  embed = embedding.from_checkpoint(pretrained, builder.info.metadata["bands"], "")
  every = embed(b[contract.IMAGE], b[contract.VALID]).reshape(-1, d)
  nearest = np.abs(every[None] - x_embedded[:5, None, x_plain.shape[1]:x_plain.shape[1] + d])
  assert (nearest.max(-1).min(-1) < 1e-5).all()


def test_embedding_baselines_need_the_pretrained_arm_and_known_names(labelled_data_dir,
                                                                   tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.inits = ("random",)
  c.study.embedding_baselines = ("linear",)
  with pytest.raises(ConfigError, match=r"^config.study.embedding_baselines: \('linear',\) "
                     r"need the pretrained arm's checkpoint"):
    run_study(c, str(tmp_path))
  c.study.inits = ("pretrained", "random")
  c.study.embedding_baselines = ("forest",)
  with pytest.raises(ConfigError, match=r"^config.study.embedding_baselines: unknown 'forest'"):
    run_study(c, str(tmp_path))
  assert not os.listdir(tmp_path)                            # refused before any work


def test_smoke_study_adds_embedding_rows_beside_the_classical_ones(labelled_data_dir,
                                                                  pretrained, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.inits = ("pretrained",)                            # one deep run: faster
  c.study.fractions = (0.25,)
  c.study.pretrain_workdir = pretrained
  c.study.baselines = ("linear",)
  c.study.embedding_baselines = ("linear",)
  run_study(c, str(tmp_path))
  study = json.load(open(tmp_path / "study.json"))
  [row] = study["embedding_baselines"]
  assert row["name"] == "frac0.25_linear+pretrained_seed0" and row["baseline"] == "linear"
  assert row["embedding_from"] == pretrained and 0 < row["miou"] <= 1
  assert [b["name"] for b in study["baselines"]] == ["frac0.25_linear_seed0"]
  mine = json.load(open(tmp_path / "runs" / row["name"] / "label_fraction.json"))
  deep = json.load(open(tmp_path / "runs" / "frac0.25_pretrained_seed0" / "label_fraction.json"))
  assert mine["indices"] == deep["indices"]
  summary = study["summary"][0]
  gain = summary["embedding_baselines"]["linear"]["gain_over_pixels"]
  assert gain["per_seed"]["0"] == pytest.approx(100 * (row["miou"]
                                                       - study["baselines"][0]["miou"]))
  assert summary["with_vs_without"]["with"] in ("pretrained", "linear+pretrained")
  assert summary["with_vs_without"]["without"] == "linear"   # no random arm here
  text = open(tmp_path / "report.md").read()
  assert "## Classical classifiers with the pre-trained embedding" in text
  assert "## With the pre-training or without" in text and "- 1/4: the best with" in text


def test_study_loads_and_compiles_the_embedding_once_for_all_its_rows(labelled_data_dir,
                                                                     pretrained, tmp_path,
                                                                     monkeypatch):
  from ee_jax.baselines import embedding  # pylint: disable=import-outside-toplevel
  loads, real = [], embedding.from_checkpoint
  monkeypatch.setattr(embedding, "from_checkpoint",
                      lambda *a, **k: loads.append(a) or real(*a, **k))
  c = tiny_study_config(labelled_data_dir)
  c.study.inits = ("pretrained",)
  c.study.fractions = (0.25,)
  c.study.seeds = (0, 1)
  c.study.pretrain_workdir = pretrained
  c.study.baselines = ("linear",)
  c.study.embedding_baselines = ("linear",)
  run_study(c, str(tmp_path))
  rows = json.load(open(tmp_path / "study.json"))["embedding_baselines"]
  assert [r["name"] for r in rows] == ["frac0.25_linear+pretrained_seed0",
                                       "frac0.25_linear+pretrained_seed1"]
  assert len(loads) == 1 and loads[0][0] == pretrained
  loads.clear()
  run_study(c, str(tmp_path))           # every run is reused: no checkpoint is loaded
  assert not loads
