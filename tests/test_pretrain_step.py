"""The pmapped pre-training step: it learns, and it does not depend on the device count."""

import jax
import numpy as np
import optax
import pytest

from ee_jax import augment, losses, models, parallel, train
from ee_jax.train import optim

# Init weights from an 'rbg' key: threefry initialisers take seconds to compile on CPU and
# these tests do not care how the weights were drawn. Views and anchors use threefry keys,
# the production default, since their device-count independence is what is tested.
INIT_KEY = jax.random.key(0, impl="rbg")


def _tiles(b, t, size, c, seed=0):
  """Random but structured tiles: 4x4-pixel patches plus per-pixel texture, so pixels have
  distinctive neighbourhoods to be recognised by."""
  rng = np.random.default_rng(seed)
  base = np.kron(rng.normal(size=(b, t, size // 4, size // 4, c)), np.ones((1, 1, 4, 4, 1)))
  image = np.clip(1000 + 300 * (base + 0.5 * rng.normal(size=base.shape)), 0, None)
  return dict(image=image.astype(np.uint16), valid=np.ones((b, t, size, size), bool),
              index=np.arange(b))


def _model(**kw):
  cfg = models.default_config()
  cfg.update(dict(widths=(8, 16), features=8, proj_dim=16), **kw)
  return models.build_pretrain_model(cfg)


def _loss_cfg(**kw):
  cfg = losses.default_config()
  cfg.update(dict(num_anchors=32, temperature=0.2), **kw)
  return cfg


def test_pretrain_step_learns_on_two_devices():
  steps, c = 40, 3
  model = _model(widths=(16, 32), features=32)
  ocfg = optim.default_config()
  ocfg.update(learning_rate=1e-2, warmup_steps=3)
  tx, schedule = optim.make_optimizer(ocfg, steps)
  aug, lcfg = augment.AugmentConfig(crop_size=16), _loss_cfg()
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  batch = parallel.shard(_tiles(4, 1, 20, c))
  state = parallel.replicate(train.init_state(model, tx, INIT_KEY, aug, (1, 20, 20, c)))
  key = parallel.replicate(jax.random.key(1))
  step = parallel.pmap_step(train.make_pretrain_step(model, tx, schedule, mean, std, aug, lcfg),
                            donate_argnums=(0,))
  evaluate = parallel.pmap_step(train.make_eval_step(model, mean, std, aug, lcfg))

  before = parallel.unreplicate(evaluate(state, batch, key))
  history = []
  for _ in range(steps):
    state, m = step(state, batch, key)
    history.append(parallel.unreplicate(m))
  after = parallel.unreplicate(evaluate(state, batch, key))

  assert all(np.isfinite(h["loss"]) and np.isfinite(h["grad_norm"]) for h in history)
  assert history[0]["lr"] == 0.0 and history[3]["lr"] > 0.0            # warmup schedule
  assert int(parallel.unreplicate(state.step)) == steps
  # Same views and anchors before and after (eval uses step 0): a like-for-like comparison.
  assert after["loss"] < before["loss"] - 0.5, (before, after)
  assert after["top1"] > before["top1"] + 0.15, (before, after)
  first = np.mean([h["loss"] for h in history[:5]])
  last = np.mean([h["loss"] for h in history[-5:]])
  assert last < first - 0.5


def test_step_independent_of_device_count():
  """Temporal 'shared' model, date subsets, clouds: one step on 1 device == on 2 devices."""
  c = 2
  model = _model(temporal="shared")
  tx = optax.sgd(1.0)                          # new params = params - grads: compares grads
  schedule = optax.constant_schedule(1.0)
  aug = augment.AugmentConfig(crop_size=10, num_dates=2, cloud_prob=0.5)
  lcfg = _loss_cfg(num_anchors=16, exclude_radius=2.0)
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  host_batch = _tiles(4, 3, 12, c, seed=1)
  host_batch["valid"][:, 0, :6] = False        # some nodata
  state = train.init_state(model, tx, INIT_KEY, aug, (3, 12, 12, c))
  step = parallel.pmap_step(train.make_pretrain_step(model, tx, schedule, mean, std, aug, lcfg))

  results = []
  for n in (1, 2):
    devices = jax.local_devices()[:n]
    new, m = step(parallel.replicate(state, devices), parallel.shard(host_batch, n),
                  parallel.replicate(jax.random.key(5), devices))
    results.append(parallel.unreplicate((new.params, m)))
  (p1, m1), (p2, m2) = results
  for name in m1:
    np.testing.assert_allclose(m2[name], m1[name], rtol=1e-5, atol=1e-6, err_msg=name)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         p1, p2)
  assert 0 < m1["anchors"] <= 16 and np.isfinite(m1["loss"])


def test_bf16_step_keeps_fp32_params():
  c = 2
  model = _model(dtype="bfloat16")
  tx, schedule = optim.make_optimizer(optim.default_config(), 10)
  aug = augment.AugmentConfig()
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  state = parallel.replicate(train.init_state(model, tx, INIT_KEY, aug, (1, 8, 8, c)))
  step = parallel.pmap_step(train.make_pretrain_step(model, tx, schedule, mean, std, aug,
                                                     _loss_cfg(num_anchors=8)))
  legacy_key = jax.random.PRNGKey(1)             # raw uint32 keys work as well as typed ones
  state, m = step(state, parallel.shard(_tiles(2, 1, 8, c)), parallel.replicate(legacy_key))
  assert np.isfinite(parallel.unreplicate(m)["loss"])
  assert all(p.dtype == np.float32 for p in jax.tree_util.tree_leaves(state.params))


def test_optimizer_schedule_decay_mask_and_sharding():
  cfg = optim.default_config()
  cfg.update(learning_rate=1.0, warmup_steps=10, end_lr_factor=0.1)
  _, schedule = optim.make_optimizer(cfg, 110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(110)],
                             [0.0, 0.5, 1.0, 0.1], atol=1e-6)
  params = {"backbone": {"Conv_0": {"kernel": np.ones((3, 3, 2, 4)), "bias": np.ones(4)},
                         "GroupNorm_0": {"scale": np.ones(4), "bias": np.ones(4)}}}
  mask = optim.decay_mask(params)["backbone"]
  assert mask == {"Conv_0": {"kernel": True, "bias": False},
                  "GroupNorm_0": {"scale": False, "bias": False}}
  x = {"a": np.arange(12).reshape(6, 2)}
  np.testing.assert_array_equal(parallel.unshard(parallel.shard(x, 2))["a"], x["a"])
  with pytest.raises(ValueError, match="multiple of 4"):
    parallel.shard(x, 4)
