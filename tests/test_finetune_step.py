"""The fine-tuning step (ee_jax/train/finetune.py's make_step) and its variants.

`head_only` (no backbone gradient) makes the same update as the full step wherever the
optimizer leaves the backbone as it is (LP-FT's probe, freeze_backbone), and really skips
the backbone's backward pass; the devices meet once a step. `cached_features` (the head-alone
steps on the backbone's features computed once) makes the same update as the head-alone step
that runs the backbone, in a program without the backbone; and the rule for when to cache.
"""

import jax
import ml_collections
import numpy as np
import pytest

from configs import defaults
from ee_jax import models
from ee_jax.errors import ConfigError
from ee_jax.runtime import parallel
from ee_jax.train import finetune
from ee_jax.train.state import TrainState

T, S, C, K = 2, 16, 3, 4   # dates, tile size, bands, classes


def _model_cfg(head_input=""):
  c = models.default_config()
  c.head_input = head_input
  c.widths, c.features, c.num_groups = (8, 16), 16, 4
  c.temporal = "stack"
  c.conv_impl = "xla"   # one convolution op per convolution: countable in the program
  return c


def _finetune_cfg(**overrides):
  c = defaults.add_finetune(defaults.get_base_config())
  c.finetune.update(overrides)
  return c.finetune


def _setup(finetune_cfg, total):
  model = models.build_segmentation_model(_model_cfg(), K)
  optim_cfg = defaults.get_base_config().optim
  optim_cfg.warmup_steps = 1
  tx, schedule = finetune.make_optimizer(optim_cfg, finetune_cfg, total)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  mean, std = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)
  make = lambda head_only: parallel.pmap_step(finetune.make_step(  # noqa: E731
      model, tx, schedule, mean, std, K, ignore_index=255, head_only=head_only))
  return TrainState.create(params, tx), make


def _random_batches(steps, seed=0):
  n, b = jax.local_device_count(), 2
  rng = np.random.default_rng(seed)
  for s in range(steps):
    label = rng.integers(0, K, size=(n, b, S, S)).astype(np.int32)
    label[:, :, :2] = 255   # some ignored pixels
    yield {"image": rng.integers(0, 3000, size=(n, b, T, S, S, C)).astype(np.uint16),
           "valid": rng.random((n, b, T, S, S)) > 0.1,
           "label": label,
           "index": (s * n * b + np.arange(n * b)).reshape(n, b).astype(np.int32)}


def _train(p_step, state, batches):
  key = parallel.replicate(jax.random.PRNGKey(1))
  p_state, history = parallel.replicate(state), []
  for batch in batches:
    p_state, metrics = p_step(p_state, batch, key)
    history.append(jax.device_get(parallel.unreplicate(metrics)))
  return jax.device_get(parallel.unreplicate(p_state)), history


def _assert_close(a, b):
  # The same forward and head gradients, only compiled into a different program: float32
  # rounding of the reductions, about 1e-6 relative, then at most lr x that in the params.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("recipe", ["lp_ft", "frozen"])
def test_head_only_step_equals_the_full_step_where_the_backbone_stays(recipe):
  steps = 3
  cfg = (_finetune_cfg(linear_probe_steps=steps) if recipe == "lp_ft"
         else _finetune_cfg(freeze_backbone=True))
  total = steps + 2
  assert finetune.head_only_steps(cfg, total) == (steps if recipe == "lp_ft" else total)
  state, make = _setup(cfg, total)
  full, full_metrics = _train(make(False), state, _random_batches(steps))
  head, head_metrics = _train(make(True), state, _random_batches(steps))
  assert int(head.step) == int(full.step) == steps
  for got in (full, head):  # the backbone is exactly the initial one in both
    jax.tree.map(np.testing.assert_array_equal, got.params["backbone"],
                 jax.device_get(state.params["backbone"]))
  _assert_close(head.params, full.params)
  _assert_close(head.opt_state, full.opt_state)
  for a, b in zip(head_metrics, full_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["pixel_acc"], b["pixel_acc"], rtol=1e-6)
    # grad_norm is the norm of the gradients applied: the head's alone, below the full one.
    assert 0 < a["grad_norm"] < b["grad_norm"]
  # The heads did train: a step that changed nothing would pass the comparisons above.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), head.params["head"],
                       jax.device_get(state.params["head"]))
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_head_only_step_has_no_backbone_backward():
  """Counted in the program: the full step holds each convolution's forward, input gradient
  and kernel gradient; the head-only step the forwards and the head's gradient alone."""
  model = models.build_segmentation_model(_model_cfg(), K)
  optim_cfg = defaults.get_base_config().optim
  tx, schedule = finetune.make_optimizer(optim_cfg, _finetune_cfg(linear_probe_steps=2), 4)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  state = TrainState.create(params, tx)
  batch = jax.tree.map(lambda x: x[0], next(_random_batches(1)))   # one device's share
  key = jax.random.PRNGKey(1)

  def convolutions(fn, *args):
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.convolution")

  def step(head_only):
    one = finetune.make_step(model, tx, schedule, np.ones(C), np.ones(C), K,
                             ignore_index=255, head_only=head_only)
    return jax.vmap(one, axis_name=parallel.AXIS)   # a device axis of 1, for the psums

  add_axis = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731
  args = (add_axis(state), add_axis(batch), add_axis(key))
  x = np.zeros((2, T, S, S, C), np.float32)
  forward = convolutions(lambda p: model.apply({"params": p}, x), params)
  full, head = convolutions(step(False), *args), convolutions(step(True), *args)
  assert forward > 0
  assert full >= 3 * forward - 1, (full, forward)   # the first layer needs no input gradient
  assert head <= forward + 2, (head, forward)       # + the head's kernel gradient


@pytest.mark.parametrize("head_only", [False, True])
def test_devices_meet_once_a_step(head_only):
  """One all-reduce in the compiled step (gradients, loss sum, counts together): a device
  that waits mid-step in a collective holds a pool thread the other device needs on CPU
  (finetune.py's step section). The step before this had three."""
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests run with 2 fake CPU devices)")
  state, make = _setup(_finetune_cfg(linear_probe_steps=2), 4)
  batch = next(_random_batches(1))
  key = parallel.replicate(jax.random.PRNGKey(1))
  text = make(head_only).lower(parallel.replicate(state), batch, key).compile().as_text()
  all_reduces = [line for line in text.splitlines()
                 if " all-reduce(" in line and line.lstrip().startswith(("%", "ROOT %"))]
  assert len(all_reduces) == 1, all_reduces


# ------------------------------------------------- head-alone steps on cached backbone features

NUM_TILES = 5


def _tiles(seed=0):
  rng = np.random.default_rng(seed)
  label = rng.integers(0, K, size=(NUM_TILES, S, S)).astype(np.int32)
  label[:, :2] = 255   # some ignored pixels
  return {"image": rng.integers(0, 3000, size=(NUM_TILES, T, S, S, C)).astype(np.uint16),
          "valid": rng.random((NUM_TILES, T, S, S)) > 0.1, "label": label}


def _p_features_fn(model):
  return parallel.pmap_step(finetune.make_features_fn(model))


def _tile_batches(tiles, steps, b=2, seed=1):
  """Batches of tiles drawn with repeats, as a small label fraction's epochs draw them; the
  examples' `index` is their tile's."""
  n = jax.local_device_count()
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    pick = rng.integers(0, NUM_TILES, size=(n, b))
    yield {**{k: v[pick] for k, v in tiles.items()}, "index": pick.astype(np.int32)}


@pytest.mark.parametrize("dihedral,head_input", [(True, ""), (False, ""), (True, "raw3x3")])
def test_cached_head_step_equals_the_head_step_that_runs_the_backbone(dihedral, head_input):
  """Also with the input beside the features (`head_input`): the cache holds what the head
  classifies, the input's channels flipped with the tile."""
  steps, b = 4, 2
  cfg = _finetune_cfg(linear_probe_steps=steps)
  model = models.build_segmentation_model(_model_cfg(head_input), K)
  optim_cfg = defaults.get_base_config().optim
  optim_cfg.warmup_steps = 1
  tx, schedule = finetune.make_optimizer(optim_cfg, cfg, steps + 2)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  mean, std = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)
  state = TrainState.create(params, tx)
  tiles = _tiles()

  plain = parallel.pmap_step(finetune.make_step(
      model, tx, schedule, mean, std, K, ignore_index=255, dihedral=dihedral, head_only=True))
  views = finetune.NUM_DIHEDRAL if dihedral else 1
  feats = finetune.compute_features(_p_features_fn(model), params["backbone"], tiles["image"],
                                    tiles["valid"], mean, std, views, per_device=b)
  assert feats.shape[:2] == (NUM_TILES, views)
  assert feats.shape[-1] == _model_cfg().features + (2 * T * C if head_input else 0)
  slot = np.full(NUM_TILES + 3, -1, np.int32)   # the split holds more tiles than are used
  slot[:NUM_TILES] = np.arange(NUM_TILES)
  cache = parallel.replicate({"features": feats, "slot": slot})
  step = parallel.pmap_step(finetune.make_step(
      model, tx, schedule, None, None, K, ignore_index=255, dihedral=dihedral, head_only=True,
      cached_features=True))
  cached = lambda p, batch, key: step(p, batch, key, cache)   # noqa: E731

  want, want_metrics = _train(plain, state, _tile_batches(tiles, steps, b))
  got, got_metrics = _train(cached, state, _tile_batches(tiles, steps, b))
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
  feats = finetune.compute_features(_p_features_fn(model), params["backbone"], tiles["image"],
                                    tiles["valid"], mean, std, finetune.NUM_DIHEDRAL,
                                    per_device=3)
  fn = finetune.make_features_fn(model)
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
  tx, schedule = finetune.make_optimizer(optim_cfg, _finetune_cfg(linear_probe_steps=2), 4)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  state = TrainState.create(params, tx)
  batch = jax.tree.map(lambda x: x[0], next(_tile_batches(_tiles(), 1)))
  feats = np.zeros((NUM_TILES, 8, S, S, _model_cfg().features), np.float32)
  cache = {"features": feats, "slot": np.arange(NUM_TILES, dtype=np.int32)}
  add_axis = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731

  def convolutions(one, *args):
    return jax.jit(jax.vmap(one, axis_name=parallel.AXIS)).lower(
        *map(add_axis, (state, batch, jax.random.PRNGKey(1)) + args)).as_text().count(
            "stablehlo.convolution")

  cached = convolutions(finetune.make_step(
      model, tx, schedule, None, None, K, ignore_index=255, head_only=True,
      cached_features=True), cache)
  plain = convolutions(finetune.make_step(
      model, tx, schedule, np.ones(C), np.ones(C), K, ignore_index=255, head_only=True))
  assert cached <= 2, cached
  assert plain > cached + 4, (plain, cached)


def test_when_to_cache():
  rule = lambda choice="auto", **kw: finetune.should_cache_features(  # noqa: E731
      choice, **{**dict(num_tiles=8, views=8, steps=100, global_batch=16, nbytes=1 << 20,
                        processes=1), **kw})
  assert rule()                                   # 64 backbone passes instead of 1600
  assert rule(num_tiles=50)                       # 400 = a quarter of them
  assert not rule(num_tiles=128)                  # 1024: too few saved for the cache's cost
  assert not rule(num_tiles=512)                  # 4096 passes: more than the steps take
  assert rule("always", num_tiles=512)
  assert not rule("never")
  assert not rule(steps=0)                        # no head-alone step left (resumed past it)
  assert not rule("always", nbytes=finetune.MAX_CACHE_BYTES + 1)
  assert not rule(processes=2)                    # each process would need every tile
  with pytest.raises(ConfigError, match="probe_feature_cache: 'sometimes'"):
    rule("sometimes")
  assert finetune.feature_cache_bytes(8, 8, (32, 32, 32), np.float32) == 8 * 8 * 32 * 32 * 32 * 4
  with pytest.raises(ValueError, match="cached_features trains the head alone"):
    finetune.make_step(None, None, None, None, None, K, 255, cached_features=True)
