"""benchmarks/feature_probe.py: the probe recovers classes that the features hold."""

import os
import sys

import numpy as np
import pytest

from ee_jax.baselines import embedding
from ee_jax.errors import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import feature_probe  # noqa: E402


def test_probe_separates_linearly_separable_features_and_ignores_unlabelled():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=(4, 8, 8)).astype(np.uint8)
  labels[0, :2] = 255                                         # ignored pixels
  features = np.eye(3)[np.minimum(labels, 2)] * 3 + rng.normal(size=labels.shape + (3,))
  features = np.concatenate([features, rng.normal(size=labels.shape + (5,))], -1)  # noise dims
  predict = feature_probe.fit_probe(features, labels, 3, 255)
  pred = predict(features).reshape(labels.shape)
  keep = labels != 255
  assert (pred[keep] == labels[keep]).mean() > 0.9
  noise = rng.normal(size=features.shape)                    # no information: near chance
  assert (feature_probe.fit_probe(noise, labels, 3, 255)(rng.normal(size=features.shape))
          .reshape(labels.shape)[keep] == labels[keep]).mean() < 0.6


def test_clusters_name_the_dominant_structure_from_few_labels():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, size=(6, 8, 8)).astype(np.uint8)
  pool = np.eye(3)[labels] * 4 + 0.3 * rng.normal(size=labels.shape + (3,))
  few = labels.copy()
  few[1:] = 255                                              # one tile of labels
  predict = feature_probe.fit_clusters(pool, pool, few, 6, 3, 255)
  assert (predict(pool).reshape(labels.shape) == labels).mean() > 0.95
  # Structure that is not the classes (a nuisance) names nothing: near chance.
  nuisance = np.eye(3)[rng.integers(0, 3, size=labels.shape)] * 4
  predict = feature_probe.fit_clusters(nuisance, nuisance, labels, 3, 3, 255)
  assert (predict(nuisance).reshape(labels.shape) == labels).mean() < 0.5


def test_raw_features_stack_dates_and_bands_with_nodata_at_the_mean():
  image = np.full((2, 3, 4, 4, 2), 110, np.uint16)
  valid = np.ones((2, 3, 4, 4), bool)
  valid[:, 1] = False
  f = feature_probe.raw_features(image, valid, np.array([100.0, 100.0]), np.array([5.0, 5.0]))
  assert f.shape == (2, 4, 4, 6)
  np.testing.assert_allclose(f[0, 0, 0], [2, 2, 0, 0, 2, 2])


def test_a_missing_config_file_is_named_by_its_flag():
  with pytest.raises(ConfigError, match="--config: file not found: configs/nope.py"):
    feature_probe.main(["--config=configs/nope.py"])


def test_smoothed_averages_each_3x3_neighbourhood_with_edges_replicated():
  f = np.zeros((1, 5, 5, 2))
  f[0, 2, 2, 0] = 9.0                                          # an impulse in channel 0
  f[..., 1] = 4.0                                              # a constant in channel 1
  s = feature_probe.smoothed(f)
  expected = np.zeros((5, 5))
  expected[1:4, 1:4] = 1.0
  np.testing.assert_allclose(s[0, ..., 0], expected)
  np.testing.assert_allclose(s[0, ..., 1], 4.0)              # corners too: edges replicated


def test_layer_probes_a_block_inside_the_backbone_at_tile_resolution():
  import jax
  from configs import defaults
  from ee_jax import models
  cfg = defaults.smoke(defaults.get_base_config()).model    # widths (8, 16), D = 16
  shape = (2, 2, 8, 8, 3)
  params = models.init_params(models.build_backbone(cfg), jax.random.PRNGKey(0), shape,
                              with_valid=True)
  rng = np.random.default_rng(0)
  image = rng.integers(500, 1500, size=shape).astype(np.uint16)
  valid = np.ones(shape[:4], bool)
  mean, std = np.full(3, 1000.0), np.full(3, 300.0)
  args = (cfg, params, image, valid, mean, std)
  out = embedding.backbone_features(*args)
  assert out.shape == (2, 8, 8, 16)
  assert embedding.backbone_features(*args, layer="enc1").shape == (2, 8, 8, 16)
  assert embedding.backbone_features(*args, layer="enc0").shape == (2, 8, 8, 8)
  # The output is ReLU of the final GroupNorm: the captured block is the right tensor.
  pre = embedding.backbone_features(*args, layer="out_norm")
  np.testing.assert_allclose(np.maximum(pre, 0.0), out, rtol=1e-6, atol=1e-6)
  assert (pre < 0).any()
  # Several blocks side by side, in the order named ('output': the backbone's output).
  both = embedding.backbone_features(*args, layer="output,enc0")
  assert both.shape == (2, 8, 8, 16 + 8)
  np.testing.assert_allclose(both[..., :16], out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(both[..., 16:], embedding.backbone_features(*args, layer="enc0"),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ConfigError, match="no block 'enc7'.*'enc0'"):
    embedding.backbone_features(*args, layer="enc7")


def test_plus_input_is_what_the_segmentation_head_sees():
  """A source's `+input` features equal SegmentationModel.head_features with
  head_input='raw3x3' on the same backbone: the probe reads the head's view."""
  import jax
  from configs import defaults
  from ee_jax import models
  from ee_jax.train import finetune
  cfg = defaults.smoke(defaults.get_base_config()).model
  cfg.head_input = "raw3x3"
  shape = (2, 2, 8, 8, 3)
  model = models.build_segmentation_model(cfg, 4)
  params = models.init_params(model, jax.random.PRNGKey(0), shape, with_valid=True)
  rng = np.random.default_rng(0)
  image = rng.integers(500, 1500, size=shape).astype(np.uint16)
  valid = rng.random(shape[:4]) > 0.2
  mean, std = np.full(3, 1000.0), np.full(3, 300.0)
  base = embedding.backbone_features(cfg, params["backbone"], image, valid, mean, std)
  got = feature_probe.with_input(base, image, valid, mean, std)
  want = finetune.head_features(model, params["backbone"],
                                *finetune.prepare_inputs(image, valid, mean, std))
  assert got.shape == (2, 8, 8, 16 + 2 * 2 * 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_beside_pixels_puts_the_baselines_view_first_then_the_features_and_their_3x3_mean():
  rng = np.random.default_rng(2)
  pixels, features = rng.normal(size=(2, 5, 5, 4)), rng.normal(size=(2, 5, 5, 3))
  out = feature_probe.beside_pixels(features, pixels)
  assert out.shape == (2, 5, 5, 10) and out.dtype == np.float32
  np.testing.assert_allclose(out[..., :4], pixels, rtol=1e-6)
  np.testing.assert_allclose(out[..., 4:7], features, rtol=1e-6)
  np.testing.assert_allclose(out[..., 7:], feature_probe.smoothed(features), rtol=1e-6)


def test_a_classifier_probe_fits_only_the_kept_pixels_and_separates_the_classes():
  """`--classifier=lightgbm`'s fit: trees on a pixel sample; a pixel left out (unobserved)
  with a wrong label must not teach them anything."""
  pytest.importorskip("lightgbm")
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 3, size=(4, 8, 8))
  features = np.eye(3)[labels] * 3 + 0.3 * rng.normal(size=labels.shape + (3,))
  keep = np.ones(labels.shape, bool)
  wrong = labels.copy()
  wrong[:2] = (labels[:2] + 1) % 3        # half the tiles mislabelled, but not kept: counted,
  keep[:2] = False                        # they would leave every class half wrong
  predict = feature_probe.fit_classifier("lightgbm", features, wrong, keep, 3, seed=0)
  assert (predict(features).reshape(labels.shape) == labels).mean() > 0.95


def test_an_unknown_classifier_is_named_by_its_flag():
  with pytest.raises(ConfigError, match=r"^--classifier: unknown 'forest'; known: "):
    feature_probe.main(["--classifier=forest"])


def test_probe_runs_end_to_end_and_builds_each_backbone_once(labelled_data_dir, pretrained,
                                                             monkeypatch, capsys):
  """Every source is probed at every fraction; the random backbone and the checkpoint are
  each initialised (or read) and compiled once, however many tile sets they embed."""
  from tests.helpers import tiny_finetune_config
  monkeypatch.setattr(feature_probe, "load_config_file",
                      lambda *a, **k: tiny_finetune_config(labelled_data_dir))
  built = []
  for name in ("embedder", "from_checkpoint"):
    real = getattr(feature_probe, name)
    monkeypatch.setattr(feature_probe, name,
                        lambda *a, _real=real, _name=name, **k: built.append(_name)
                        or _real(*a, **k))
  feature_probe.main([f"--sources=raw3x3,random,{pretrained}", "--fractions=0.5,1",
                      "--steps=5"])
  rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
  assert [(r[0], r[-1]) for r in rows] == [(f, s) for f in ("0.5", "1")
                                           for s in ("raw3x3", "random", pretrained)]
  assert all(0 <= float(r[2]) <= 100 and 0 <= float(r[3]) <= 100 for r in rows)
  assert sorted(built) == ["embedder", "from_checkpoint"]
