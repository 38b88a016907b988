"""The latent objective: target normalisation and loss against numpy, device-count
independence, the EMA teacher in the step and in checkpoints, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ee_jax import augment, checkpoints, models, objectives, train
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError
from ee_jax.objectives import latent
from ee_jax.train import optim

INIT_KEY = jax.random.key(0, impl="rbg")   # cheap to compile; how weights are drawn is moot


def _case(seed=0, b=2, t=3, s=5, d=4):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(b, s, s, d)).astype(np.float32)
  feats = (rng.normal(size=(b, s, s, d)) * [0.1, 1.0, 10.0, 3.0] + 5.0).astype(np.float32)
  observed = rng.random((b, t, s, s)) > 0.6
  observed[0, :, 0, 0] = False        # a pixel never observed
  return pred, feats, observed


def _reference(pred, feats, observed, eps):
  w = observed.any(axis=1)                                                   # [B, S, S]
  losses, count = 0.0, 0
  for i in range(pred.shape[0]):
    f = feats[i][w[i]].astype(np.float64)                                   # [N, D]
    target = (f - f.mean(0)) / np.sqrt(f.var(0) + eps)
    losses += np.square(pred[i][w[i]] - target).mean(axis=1).sum()
    count += w[i].sum()
  return losses / count


def test_targets_and_loss_match_numpy():
  pred, feats, observed = _case()
  cfg = latent.default_config()
  loss, m = latent.latent_loss(pred, feats, observed, cfg)
  np.testing.assert_allclose(loss, _reference(pred, feats, observed, cfg.eps), rtol=1e-5)
  np.testing.assert_allclose(m["latent"], loss, rtol=1e-6)
  # Every channel of the target has zero mean and unit variance over the observed pixels
  # (up to the eps floor), whatever its scale in the teacher (0.1 to 10 here): each weighs
  # the same in the error.
  w = observed.any(axis=1)
  target = np.asarray(latent.normalise_targets(feats, w, cfg.eps))
  for i in range(2):
    np.testing.assert_allclose(target[i][w[i]].mean(0), 0.0, atol=1e-5)
    var = feats[i][w[i]].astype(np.float64).var(0)
    np.testing.assert_allclose(target[i][w[i]].var(0), var / (var + cfg.eps), rtol=1e-4)
  # Pixels never observed do not count: changing the prediction there changes nothing.
  pred2 = pred.copy()
  pred2[0, 0, 0] += 100.0
  np.testing.assert_allclose(latent.latent_loss(pred2, feats, observed, cfg)[0], loss,
                             rtol=1e-6)
  # The target is not trained through: no gradient reaches the teacher's features.
  g = jax.grad(lambda f: latent.latent_loss(pred, f, observed, cfg)[0])(feats)
  assert not np.asarray(g).any()


def test_two_devices_equal_one_device_loss_and_grads():
  pred, feats, observed = _case(seed=1, b=4)
  weights = np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32)
  cfg = latent.default_config()

  def loss_fn(wts, x, f, o, axis_name):
    return latent.latent_loss(x @ wts, f, o, cfg, axis_name)

  (loss, m), grad = jax.value_and_grad(loss_fn, has_aux=True)(weights, pred, feats, observed,
                                                               None)

  def per_device(wts, x, f, o):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(wts, x, f, o, parallel.AXIS)
    return jax.lax.pmean((loss, m, g), parallel.AXIS)

  loss2, m2, grad2 = parallel.unreplicate(parallel.pmap_step(per_device)(
      parallel.replicate(weights), *parallel.shard((pred, feats, observed))))
  # fp32 sums in another order (per device, then across): relative error ~ N * 2^-24.
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  np.testing.assert_allclose(m2["latent"], m["latent"], rtol=1e-5)
  np.testing.assert_allclose(grad2, grad, rtol=1e-4, atol=1e-6)


def test_ema_must_be_below_one():
  cfg = objectives.default_config()
  cfg.weights.latent = 1.0
  cfg.latent.ema = 1.0
  with pytest.raises(ConfigError, match="config.loss.latent.ema"):
    objectives.head_sizes(cfg)


def _setup(weights, ema=0.9, lr=1e-2, steps=10):
  mcfg = models.default_config()
  mcfg.update(widths=(8, 16), features=8, proj_dim=8)
  lcfg = objectives.default_config()
  lcfg.weights.update(weights)
  lcfg.latent.ema = ema
  model = models.build_pretrain_model(mcfg, lcfg)
  ocfg = optim.default_config()
  ocfg.update(learning_rate=lr, warmup_steps=1)
  tx, schedule = optim.make_optimizer(ocfg, steps)
  c = 3
  aug = augment.AugmentConfig(crop_size=12)
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  state = train.init_state(model, tx, INIT_KEY, aug, (2, 16, 16, c))
  step = train.make_pretrain_step(model, tx, schedule, mean, std, aug, lcfg)
  rng = np.random.default_rng(0)
  base = np.kron(rng.normal(size=(4, 2, 4, 4, c)), np.ones((1, 1, 4, 4, 1)))
  image = np.clip(1000 + 300 * (base + 0.3 * rng.normal(size=base.shape)), 0, None)
  batch = dict(image=image.astype(np.uint16), valid=np.ones((4, 2, 16, 16), bool),
               index=np.arange(4))
  return state, parallel.pmap_step(step), parallel.shard(batch, 1), lcfg


def test_teacher_exists_only_for_the_latent_objective_and_follows_by_ema():
  state, _, _, _ = _setup({"infonce": 0.0, "masked": 1.0})
  assert state.teacher is None       # other objectives: the state's tree is as before
  state, step, batch, lcfg = _setup({"infonce": 0.0, "latent": 1.0})
  # The teacher starts as the backbone and is a separate copy of it.
  for a, b in zip(jax.tree_util.tree_leaves(state.teacher),
                  jax.tree_util.tree_leaves(state.params["backbone"])):
    np.testing.assert_array_equal(a, b)
  key = parallel.replicate(jax.random.key(3), jax.local_devices()[:1])
  p_state = parallel.replicate(state, jax.local_devices()[:1])
  for _ in range(2):
    old_teacher = parallel.unreplicate(p_state.teacher)
    p_state, m = step(p_state, batch, key)
  new = parallel.unreplicate(p_state)
  ema = lcfg.latent.ema
  moved = 0.0
  for t_old, t_new, p in zip(jax.tree_util.tree_leaves(old_teacher),
                             jax.tree_util.tree_leaves(new.teacher),
                             jax.tree_util.tree_leaves(new.params["backbone"])):
    np.testing.assert_allclose(t_new, ema * t_old + (1 - ema) * p, rtol=1e-5, atol=1e-7)
    moved = max(moved, float(np.abs(np.asarray(t_new) - t_old).max()))
  assert moved > 0     # the student moved, so the teacher did
  assert np.isfinite(float(parallel.unreplicate(m)["latent"]))


def test_teacher_is_checkpointed_and_restored(tmp_path):
  state, _, _, _ = _setup({"infonce": 0.0, "latent": 1.0})
  state = state.replace(teacher=jax.tree_util.tree_map(lambda x: x + 1.0, state.teacher))
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(3, state, {"kind": "pretrain"}, wait=True)
  restored, _ = ckpt.restore(_setup({"infonce": 0.0, "latent": 1.0})[0])
  ckpt.close()
  for a, b in zip(jax.tree_util.tree_leaves(restored.teacher),
                  jax.tree_util.tree_leaves(state.teacher)):
    np.testing.assert_array_equal(a, b)


def test_latent_objective_learns():
  steps = 30
  state, step, batch, _ = _setup({"infonce": 0.0, "latent": 1.0}, ema=0.99, lr=1e-2,
                                 steps=steps)
  key = parallel.replicate(jax.random.key(3), jax.local_devices()[:1])
  p_state = parallel.replicate(state, jax.local_devices()[:1])
  history = []
  for _ in range(steps):
    p_state, m = step(p_state, batch, key)
    history.append(parallel.unreplicate(m))
  # The targets have unit variance per channel: the best constant prediction (their mean,
  # 0) errs by 1 per channel, a predictor at its initial weights by more. A predictor that
  # learnt something of the teacher's features errs by clearly less than the constant.
  first = np.mean([h["latent"] for h in history[:3]])
  last = np.mean([h["latent"] for h in history[-3:]])
  assert first > 1.0 and last < 0.9, (first, last)
  assert history[-1]["latent_teacher_std"] > 1e-3      # the teacher did not collapse
