"""The head-alone steps on the backbone's features computed once (probe_features): the same
update as the head-alone step that runs the backbone, a program without the backbone, and
the rule for when to cache."""

import jax
import numpy as np
import pytest

from configs import defaults
from ee_jax import models
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError
from ee_jax.train import finetune_step, probe_features
from ee_jax.train.state import TrainState
from tests.test_head_only_step import (C, K, S, T, _assert_close, _finetune_cfg, _model_cfg,
                                       _train)

NUM_TILES = 5


def _tiles(seed=0):
  rng = np.random.default_rng(seed)
  label = rng.integers(0, K, size=(NUM_TILES, S, S)).astype(np.int32)
  label[:, :2] = 255   # some ignored pixels
  return {"image": rng.integers(0, 3000, size=(NUM_TILES, T, S, S, C)).astype(np.uint16),
          "valid": rng.random((NUM_TILES, T, S, S)) > 0.1, "label": label}


def _p_feature_fn(model):
  return parallel.pmap_step(probe_features.make_feature_fn(model))


def _batches(tiles, steps, b=2, seed=1):
  """Batches of tiles drawn with repeats, as a small label fraction's epochs draw them; the
  examples' `index` is their tile's."""
  n = jax.local_device_count()
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    pick = rng.integers(0, NUM_TILES, size=(n, b))
    yield {**{k: v[pick] for k, v in tiles.items()}, "index": pick.astype(np.int32)}


@pytest.mark.parametrize("dihedral", [True, False])
def test_cached_head_step_equals_the_head_step_that_runs_the_backbone(dihedral):
  steps, b = 4, 2
  cfg = _finetune_cfg(linear_probe_steps=steps)
  model = models.build_segmentation_model(_model_cfg(), K)
  optim_cfg = defaults.get_base_config().optim
  optim_cfg.warmup_steps = 1
  tx, schedule = finetune_step.make_optimizer(optim_cfg, cfg, steps + 2)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  mean, std = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)
  state = TrainState.create(params, tx)
  tiles = _tiles()

  plain = parallel.pmap_step(finetune_step.make_finetune_step(
      model, tx, schedule, mean, std, K, ignore_index=255, dihedral=dihedral, head_only=True))
  views = probe_features.NUM_DIHEDRAL if dihedral else 1
  feats = probe_features.compute(_p_feature_fn(model), params["backbone"], tiles["image"],
                                 tiles["valid"], mean, std, views, per_device=b)
  assert feats.shape[:2] == (NUM_TILES, views)
  slot = np.full(NUM_TILES + 3, -1, np.int32)   # the split holds more tiles than are used
  slot[:NUM_TILES] = np.arange(NUM_TILES)
  cache = parallel.replicate({"features": feats, "slot": slot})
  step = parallel.pmap_step(probe_features.make_cached_head_step(
      model, tx, schedule, K, ignore_index=255, dihedral=dihedral))
  cached = lambda p, batch, key: step(p, batch, key, cache)   # noqa: E731

  want, want_metrics = _train(plain, state, _batches(tiles, steps, b))
  got, got_metrics = _train(cached, state, _batches(tiles, steps, b))
  jax.tree.map(np.testing.assert_array_equal, got.params["backbone"],
               jax.device_get(state.params["backbone"]))
  _assert_close(got.params, want.params)
  _assert_close(got.opt_state, want.opt_state)
  for a, w in zip(got_metrics, want_metrics):
    np.testing.assert_allclose(a["loss"], w["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["pixel_acc"], w["pixel_acc"], rtol=1e-6)
    np.testing.assert_allclose(a["grad_norm"], w["grad_norm"], rtol=1e-4)
  moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), got.params["head"],
                       jax.device_get(state.params["head"]))
  assert max(jax.tree.leaves(moved)) > 1e-4   # the head trained: not a step that does nothing


def test_features_are_each_tile_under_each_flip():
  """Row (tile i, element k) is the backbone's output on tile i flipped/rotated by k, alone."""
  model = models.build_segmentation_model(_model_cfg(), K)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  mean, std = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)
  tiles = _tiles()
  feats = probe_features.compute(_p_feature_fn(model), params["backbone"], tiles["image"],
                                 tiles["valid"], mean, std, probe_features.NUM_DIHEDRAL,
                                 per_device=3)
  fn = probe_features.make_feature_fn(model)
  for i, k in ((0, 0), (3, 5), (4, 7)):
    one = fn(params["backbone"], tiles["image"][i:i + 1], tiles["valid"][i:i + 1],
             np.array([k], np.int32), mean, std)[0]
    np.testing.assert_allclose(feats[i, k], one, rtol=1e-5, atol=1e-5)
  assert not np.allclose(feats[3, 5], feats[3, 0])   # the flips do change the features


def test_cached_head_step_runs_no_backbone():
  """Counted in the program: the head's 1x1 convolution and its kernel gradient, none of
  the backbone's (which the head-alone step that runs the backbone holds)."""
  model = models.build_segmentation_model(_model_cfg(), K)
  optim_cfg = defaults.get_base_config().optim
  tx, schedule = finetune_step.make_optimizer(optim_cfg, _finetune_cfg(linear_probe_steps=2), 4)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  state = TrainState.create(params, tx)
  batch = jax.tree.map(lambda x: x[0], next(_batches(_tiles(), 1)))
  feats = np.zeros((NUM_TILES, 8, S, S, _model_cfg().features), np.float32)
  cache = {"features": feats, "slot": np.arange(NUM_TILES, dtype=np.int32)}
  add_axis = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731

  def convolutions(one, *args):
    return jax.jit(jax.vmap(one, axis_name=parallel.AXIS)).lower(
        *map(add_axis, (state, batch, jax.random.PRNGKey(1)) + args)).as_text().count(
            "stablehlo.convolution")

  cached = convolutions(probe_features.make_cached_head_step(
      model, tx, schedule, K, ignore_index=255), cache)
  plain = convolutions(finetune_step.make_finetune_step(
      model, tx, schedule, np.ones(C), np.ones(C), K, ignore_index=255, head_only=True))
  assert cached <= 2, cached
  assert plain > cached + 4, (plain, cached)


def test_when_to_cache():
  rule = lambda choice="auto", **kw: probe_features.should_cache(  # noqa: E731
      choice, **{**dict(num_tiles=8, views=8, steps=100, global_batch=16, nbytes=1 << 20,
                        processes=1), **kw})
  assert rule()                                   # 64 backbone passes instead of 1600
  assert rule(num_tiles=50)                       # 400 = a quarter of them
  assert not rule(num_tiles=128)                  # 1024: too few saved for the cache's cost
  assert not rule(num_tiles=512)                  # 4096 passes: more than the steps take
  assert rule("always", num_tiles=512)
  assert not rule("never")
  assert not rule(steps=0)                        # no head-alone step left (resumed past it)
  assert not rule("always", nbytes=probe_features.MAX_CACHE_BYTES + 1)
  assert not rule(processes=2)                    # each process would need every tile
  with pytest.raises(ConfigError, match="probe_feature_cache: 'sometimes'"):
    rule("sometimes")
  assert probe_features.cache_bytes(8, 8, (32, 32, 32), np.float32) == 8 * 8 * 32 * 32 * 32 * 4
