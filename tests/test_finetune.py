"""A fine-tuning run end to end (ee_jax/train/finetune.py) on a tiny synthetic dataset:
initial weights, evaluation, shared steps, LP-FT, cached features, the best checkpoint."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from configs import finetune_synthetic
from ee_jax import checkpoints, metrics, models, run
from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from ee_jax.runtime import parallel, shared_steps
from ee_jax.train import finetune as finetune_lib
from ee_jax.train import metrics_log
from ee_jax.train.finetune import finetune
from tests.helpers import tiny_finetune_config


@pytest.fixture
def data_dir(labelled_data_dir):
  return labelled_data_dir


def test_partial_restore_takes_backbone_and_fresh_head(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=1, freeze_backbone=True)
  c.init.checkpoint = pretrained
  finetune(c, str(tmp_path))
  src, _ = checkpoints.load_params(pretrained)
  tuned, meta = checkpoints.load_params(str(tmp_path))
  assert meta["kind"] == "finetune" and meta["init_checkpoint"] == pretrained
  # Frozen backbone: still exactly the pre-trained values after a step.
  for a, b in zip(jax.tree_util.tree_leaves(src["backbone"]),
                  jax.tree_util.tree_leaves(tuned["backbone"])):
    np.testing.assert_array_equal(a, b)
  # The head is the segmentation head (num_classes outputs), not the projection head.
  k = len(meta["class_names"])
  head_kernels = [x for x in jax.tree_util.tree_leaves(tuned["head"]) if x.ndim == 4]
  assert head_kernels[-1].shape[-1] == k


def test_partial_restore_head_is_freshly_initialised(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=1, backbone_lr_mult=0.0)
  c.optim.learning_rate = 0.0  # nothing moves: the saved params are the initial ones
  c.init.checkpoint = pretrained
  finetune(c, str(tmp_path / "a"))
  tuned, meta = checkpoints.load_params(str(tmp_path / "a"))
  fresh = models.init_params(models.build_segmentation_model(
      ml_collections.ConfigDict(meta["model"]), len(meta["class_names"])),
      jax.random.fold_in(jax.random.PRNGKey(c.seed), 0), (1, 2, 16, 16, 4), with_valid=True)
  for a, b in zip(jax.tree_util.tree_leaves(fresh["head"]),
                  jax.tree_util.tree_leaves(tuned["head"])):
    np.testing.assert_allclose(a, b)
  src, _ = checkpoints.load_params(pretrained)
  for a, b in zip(jax.tree_util.tree_leaves(src["backbone"]),
                  jax.tree_util.tree_leaves(tuned["backbone"])):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(fresh["backbone"]), jax.tree_util.tree_leaves(tuned["backbone"])))


def test_encoder_only_restore_keeps_a_fresh_decoder(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=1)
  c.optim.learning_rate = 0.0  # nothing moves: the saved params are the initial ones
  c.init.checkpoint = pretrained
  c.init.encoder_only = True
  finetune(c, str(tmp_path))
  tuned, meta = checkpoints.load_params(str(tmp_path))
  src, _ = checkpoints.load_params(pretrained)
  fresh = models.init_params(models.build_segmentation_model(
      ml_collections.ConfigDict(meta["model"]), len(meta["class_names"])),
      jax.random.fold_in(jax.random.PRNGKey(c.seed), 0), (1, 2, 16, 16, 4), with_valid=True)
  assert any(k.startswith("enc") for k in tuned["backbone"])
  assert any(not k.startswith("enc") for k in tuned["backbone"])
  for name, sub in tuned["backbone"].items():
    want = src["backbone"][name] if name.startswith("enc") else fresh["backbone"][name]
    jax.tree_util.tree_map(np.testing.assert_array_equal, sub, want)


def test_band_and_normalisation_mismatch_are_refused(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=1)
  c.init.checkpoint = pretrained
  c.data.config_name = "tiny_labelled_3bands"
  c.data.builder.num_bands = 3
  with pytest.raises(DataError, match="band list mismatch"):
    finetune(c, str(tmp_path / "bands"))
  c = tiny_finetune_config(data_dir, steps=1)
  c.init.checkpoint = pretrained
  c.data.config_name = "tiny_labelled_other_seed"
  c.data.builder.seed = 7  # other data, other statistics
  with pytest.raises(DataError, match="normalisation mismatch"):
    finetune(c, str(tmp_path / "stats"))
  c.init.allow_stats_mismatch = True
  finetune(c, str(tmp_path / "stats_allowed"))
  assert os.path.exists(tmp_path / "stats_allowed" / "eval.json")


def test_eval_counts_every_example_once_on_two_devices(data_dir, tmp_path):
  c = tiny_finetune_config(data_dir, steps=2)
  finetune(c, str(tmp_path))
  result = json.load(open(tmp_path / "eval.json"))
  builder = datasets.open_prepared(c.data)
  assert builder.info.splits["test"].num_examples == 20  # not a multiple of 2 x 4
  # The number of counted pixels: labelled and observed on some date, each tile once.
  ds = builder.as_data_source("test")
  expected = sum(int(((ds[i][contract.LABEL] != 255) & ds[i][contract.VALID].any(0)).sum())
                 for i in range(len(ds)))
  assert np.asarray(result["confusion_matrix"]).sum() == expected == result["num_pixels"]
  # Two devices and one device give the same confusion matrix.
  params, meta = checkpoints.load_params(str(tmp_path))
  p_eval = finetune_lib.make_evaluator(meta, meta["num_classes"], 255)
  cm_two = finetune_lib.confusion_over_split(p_eval, parallel.replicate(params), c, builder,
                                             "test")
  cm_one = finetune_lib.confusion_over_split(
      p_eval, parallel.replicate(params, devices=jax.devices()[:1]), c, builder, "test",
      local_devices=1)
  np.testing.assert_array_equal(cm_two, cm_one)
  np.testing.assert_array_equal(cm_two, result["confusion_matrix"])
  assert metrics.segmentation_scores(cm_one)["miou"] == pytest.approx(result["miou"])
  assert metrics.segmentation_scores(cm_one)["kappa"] == pytest.approx(result["kappa"])
  assert list(result["per_class_f1"]) == result["class_names"]
  # --mode=evaluate writes the same result again.
  os.remove(tmp_path / "eval.json")
  run.evaluate(c, str(tmp_path))
  assert json.load(open(tmp_path / "eval.json")) == result


def test_runs_in_one_process_share_compiled_steps(data_dir, tmp_path, monkeypatch):
  """A second run (other seed, other tiles) takes the first run's compiled steps instead of
  building its own, and ends exactly as it does with steps built afresh; a run whose steps
  differ (another learning rate) builds its own."""
  built = []
  make = finetune_lib.make_step

  def counting(*args, **kwargs):
    built.append(kwargs["head_only"])
    return make(*args, **kwargs)

  monkeypatch.setattr(finetune_lib, "make_step", counting)
  shared_steps.clear()
  finetune(tiny_finetune_config(data_dir, steps=4, linear_probe_steps=2), str(tmp_path / "a"))
  assert built == [True, False]
  other = tiny_finetune_config(data_dir, steps=4, linear_probe_steps=2, label_fraction=0.5)
  other.seed = 1
  shared = finetune(other, str(tmp_path / "b"))
  assert built == [True, False]                      # the first run's steps, not built again
  shared_steps.clear()
  fresh = finetune(other, str(tmp_path / "c"))
  assert built == [True, False, True, False]
  timing = ("time", "tiles_per_s", "pixels_per_s")
  assert ({k: v for k, v in shared.items() if k not in timing}
          == {k: v for k, v in fresh.items() if k not in timing})
  a = checkpoints.load_params(str(tmp_path / "b"))[0]
  b = checkpoints.load_params(str(tmp_path / "c"))[0]
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  losses = lambda d: [r["loss"] for r in metrics_log.read_metrics(d) if "loss" in r]  # noqa: E731
  assert losses(str(tmp_path / "b")) == losses(str(tmp_path / "c"))
  faster = tiny_finetune_config(data_dir, steps=4, linear_probe_steps=2)
  faster.optim.learning_rate = 2e-3
  finetune(faster, str(tmp_path / "d"))
  assert built == [True, False, True, False, True, False]
  shared_steps.clear()


def test_finetune_learns(data_dir, tmp_path):
  c = tiny_finetune_config(data_dir, steps=40)
  c.train.log_every = 10
  c.optim.learning_rate = 3e-3
  finetune(c, str(tmp_path))
  train = [r for r in metrics_log.read_metrics(str(tmp_path)) if "loss" in r]
  assert train[-1]["loss"] < train[0]["loss"] - 0.2
  assert train[-1]["pixel_acc"] > train[0]["pixel_acc"] + 0.1
  # (The tiny test split is a few scenes of other classes: its scores are only well-formed.)
  result = json.load(open(tmp_path / "eval.json"))
  assert 0 <= result["miou"] <= 1 and 0 <= result["oa"] <= 1


def test_label_fraction_tiles_written_and_used(data_dir, tmp_path):
  c = tiny_finetune_config(data_dir, steps=2, label_fraction=0.25, fraction_seed=3)
  finetune(c, str(tmp_path))
  sel = json.load(open(tmp_path / "label_fraction.json"))
  assert sel["count"] == 8 and len(sel["indices"]) == 8  # 1/4 of 32 train tiles


def _params_at(workdir, step):
  return checkpoints.load_params(os.path.join(str(workdir), "checkpoints", str(step)))[0]


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                  jax.tree_util.tree_leaves(b)))


def test_lp_ft_trains_the_head_alone_then_every_weight(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=4, linear_probe_steps=2, linear_probe_lr=1e-2)
  c.init.checkpoint = pretrained
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.log_every = 1, 10, 1
  finetune(c, str(tmp_path))
  src, _ = checkpoints.load_params(pretrained)
  at = {s: _params_at(tmp_path, s) for s in (1, 2, 3, 4)}
  for s in (1, 2, 3):  # probe steps, then the tuning's first step at lr 0 (warmup)
    assert _same(at[s]["backbone"], src["backbone"]), s
  assert not _same(at[4]["backbone"], src["backbone"])
  assert not _same(at[1]["head"], at[2]["head"])
  # lr: the probe's warmup (2 steps, capped at 1 of its 2) to 1e-2, then the normal
  # schedule afresh over the remaining 2 steps: 0 then optim.learning_rate.
  lrs = [r["lr"] for r in metrics_log.read_metrics(str(tmp_path)) if "lr" in r]
  np.testing.assert_allclose(lrs, [0.0, 1e-2, 0.0, c.optim.learning_rate], rtol=1e-6)


def test_lp_ft_resumed_mid_way_equals_an_uninterrupted_run(data_dir, pretrained, tmp_path):
  c = tiny_finetune_config(data_dir, steps=6, linear_probe_steps=3)
  c.init.checkpoint = pretrained
  c.train.checkpoint_every, c.train.keep_checkpoints = 1, 10
  finetune(c, str(tmp_path / "straight"))
  shutil.copytree(tmp_path / "straight", tmp_path / "cut")
  # As if killed after the save of step 2 (inside the probe): later steps never happened.
  for s in range(3, 7):
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(s))
  os.remove(tmp_path / "cut" / "eval.json")
  finetune(c, str(tmp_path / "cut"))
  a, b = _params_at(tmp_path / "straight", 6), _params_at(tmp_path / "cut", 6)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                         a, b)
  assert not _same(a["backbone"], checkpoints.load_params(pretrained)[0]["backbone"])


def test_probe_on_cached_features_ends_as_the_probe_that_runs_the_backbone(
    data_dir, pretrained, tmp_path, capsys):
  """LP-FT whose probe steps take the tiles' backbone features computed once
  (`finetune.probe_feature_cache`) ends as the run whose probe steps run the backbone, and
  resumed inside the probe as uninterrupted."""
  def config(mode):
    c = tiny_finetune_config(data_dir, steps=5, linear_probe_steps=3, label_fraction=0.25,
                             probe_feature_cache=mode)
    c.init.checkpoint = pretrained
    c.train.checkpoint_every, c.train.keep_checkpoints, c.train.log_every = 1, 10, 1
    return c

  finetune(config("never"), str(tmp_path / "never"))
  assert "Cached backbone features" not in capsys.readouterr().out
  finetune(config("always"), str(tmp_path / "always"))
  assert "Cached backbone features: 8 tiles x 8 flips/rotations" in capsys.readouterr().out
  losses = lambda d: [r["loss"] for r in metrics_log.read_metrics(str(d)) if "loss" in r]  # noqa: E731
  # The same steps; the backbone's features come from another program (float32 rounding,
  # about 1e-6 relative), then 2 steps of every weight.
  np.testing.assert_allclose(losses(tmp_path / "always"), losses(tmp_path / "never"),
                             rtol=1e-4)
  for step in (3, 5):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                           _params_at(tmp_path / "always", step),
                           _params_at(tmp_path / "never", step))
  assert _same(_params_at(tmp_path / "always", 3)["backbone"],
               checkpoints.load_params(pretrained)[0]["backbone"])
  shutil.copytree(tmp_path / "always", tmp_path / "cut")
  for s in range(3, 6):   # as if killed after the save of step 2, inside the probe
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(s))
  os.remove(tmp_path / "cut" / "eval.json")
  finetune(config("always"), str(tmp_path / "cut"))
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                         _params_at(tmp_path / "always", 5), _params_at(tmp_path / "cut", 5))


def test_lp_ft_config_errors():
  c = finetune_synthetic.get_config("smoke")
  c.finetune.linear_probe_steps = 6
  with pytest.raises(ConfigError, match=r"linear_probe_steps \(6\) must be below"):
    finetune_lib.make_optimizer(c.optim, c.finetune, 6)
  c.finetune.linear_probe_steps, c.finetune.freeze_backbone = 2, True
  with pytest.raises(ConfigError, match="cannot be combined with config.finetune.freeze"):
    finetune_lib.make_optimizer(c.optim, c.finetune, 6)


def test_select_best_evaluates_the_best_validation_params(data_dir, tmp_path):
  c = tiny_finetune_config(data_dir, steps=6, select_best=True)
  c.optim.learning_rate = 3e-2  # a jumpy validation curve
  c.train.eval_every, c.train.checkpoint_every, c.train.keep_checkpoints = 1, 1, 10
  finetune(c, str(tmp_path))
  logged = [(r["step"], r["eval_miou"]) for r in metrics_log.read_metrics(str(tmp_path))
            if "eval_miou" in r]
  assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
  step, miou = max(logged, key=lambda x: x[1])  # the first of equals, as max() returns
  assert step < 6  # this curve peaks before its end: the last params would not do
  best = json.load(open(tmp_path / "best" / "best.json"))
  assert best == {"step": step, "miou": miou, "split": "validation"}
  assert _same(checkpoints.load_params(str(tmp_path / "best"))[0], _params_at(tmp_path, step))
  result = json.load(open(tmp_path / "eval.json"))
  assert result["checkpoint_step"] == step
  assert result["selected_on"] == {"split": "validation", "step": step, "miou": miou}
  at_step = finetune_lib.evaluate(c, str(tmp_path), filename="eval_check.json",
                                  checkpoint=str(tmp_path / "checkpoints" / str(step)))
  assert result["confusion_matrix"] == at_step["confusion_matrix"]


def test_select_best_config_errors(data_dir, tmp_path):
  c = tiny_finetune_config(data_dir, steps=2, select_best=True)
  with pytest.raises(ConfigError, match="select_best needs validation passes"):
    finetune(c, str(tmp_path))
  c.train.eval_every = 1
  c.data.eval_split = "test"
  with pytest.raises(ConfigError, match="select_best: config.data.eval_split 'test' is the"):
    finetune(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_balanced_weights_by_hand():
  # 402 labelled px over 3 present classes: 402 / (3 x count), capped at 10, 0 when absent
  w = finetune_lib.balanced_weights([300, 100, 0, 2])
  np.testing.assert_allclose(w, [402 / 900, 402 / 300, 0.0, 10.0])
  assert finetune_lib.balanced_weights([0, 0]) == [1.0, 1.0]
  # balanced: every present class then carries the same total weight (uncapped case)
  counts = np.array([500, 50, 5])
  np.testing.assert_allclose(np.asarray(finetune_lib.balanced_weights(counts, 1e9)) * counts,
                             counts.sum() / 3)


def test_balance_classes_weighs_the_runs_own_labelled_tiles(data_dir, tmp_path):
  """The weights come from the label fraction's tiles (not the whole split) and reach the
  loss; given weights beside it are refused in one line."""
  from ee_jax.data import label_fractions
  c = tiny_finetune_config(data_dir, steps=2, label_fraction=0.25, fraction_seed=1,
                           balance_classes=True)
  run_ = finetune_lib.prepare_run(c, str(tmp_path / "a"))
  hist = label_fractions.class_histograms(run_.builder, "train", run_.num_classes, 255)
  want = finetune_lib.balanced_weights(hist[np.asarray(run_.indices)].sum(0))
  assert run_.class_weights == want
  assert want != finetune_lib.balanced_weights(hist.sum(0))   # the fraction's, not the split's
  run_.ckpt.close()
  c.finetune.class_weights = (1.0,) * run_.num_classes
  with pytest.raises(ConfigError, match="^config.finetune.balance_classes computes"):
    finetune_lib.prepare_run(c, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "b")   # refused before anything is written
