"""The fine-tuning step without the backbone's gradient (`head_only`) makes the same update
as the full step wherever the optimizer leaves the backbone as it is (LP-FT's probe,
freeze_backbone), and it really skips the backbone's backward pass."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import defaults
from ee_jax import models
from ee_jax.runtime import parallel
from ee_jax.train import finetune_step
from ee_jax.train.state import TrainState

T, S, C, K = 2, 16, 3, 4   # dates, tile size, bands, classes


def _model_cfg():
  c = models.default_config()
  c.widths, c.features, c.num_groups = (8, 16), 16, 4
  c.temporal = "stack"
  c.conv_impl = "xla"   # one convolution op per convolution: countable in the program
  return c


def _finetune_cfg(**overrides):
  c = defaults.add_finetune(ml_collections.ConfigDict())
  c.finetune.update(overrides)
  return c.finetune


def _setup(finetune_cfg, total):
  model = models.build_segmentation_model(_model_cfg(), K)
  optim_cfg = defaults.get_base_config().optim
  optim_cfg.warmup_steps = 1
  tx, schedule = finetune_step.make_optimizer(optim_cfg, finetune_cfg, total)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  mean, std = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)
  make = lambda head_only: parallel.pmap_step(finetune_step.make_finetune_step(  # noqa: E731
      model, tx, schedule, mean, std, K, ignore_index=255, head_only=head_only))
  return TrainState.create(params, tx), make


def _batches(steps, seed=0):
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
  assert finetune_step.head_only_steps(cfg, total) == (steps if recipe == "lp_ft" else total)
  state, make = _setup(cfg, total)
  full, full_metrics = _train(make(False), state, _batches(steps))
  head, head_metrics = _train(make(True), state, _batches(steps))
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
  tx, schedule = finetune_step.make_optimizer(optim_cfg, _finetune_cfg(linear_probe_steps=2), 4)
  params = models.init_params(model, jax.random.PRNGKey(0), (1, T, S, S, C), with_valid=True)
  state = TrainState.create(params, tx)
  batch = jax.tree.map(lambda x: x[0], next(_batches(1)))   # one device's share
  key = jax.random.PRNGKey(1)

  def convolutions(fn, *args):
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.convolution")

  def step(head_only):
    one = finetune_step.make_finetune_step(model, tx, schedule, np.ones(C), np.ones(C), K,
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
  (finetune_step's docstring). The step before this had three."""
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests run with 2 fake CPU devices)")
  state, make = _setup(_finetune_cfg(linear_probe_steps=2), 4)
  batch = next(_batches(1))
  key = parallel.replicate(jax.random.PRNGKey(1))
  text = make(head_only).lower(parallel.replicate(state), batch, key).compile().as_text()
  all_reduces = [line for line in text.splitlines()
                 if " all-reduce(" in line and line.lstrip().startswith(("%", "ROOT %"))]
  assert len(all_reduces) == 1, all_reduces
