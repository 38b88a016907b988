"""The pmapped pre-training step: it learns, and it does not depend on the device count."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from ee_jax import augment, models, objectives, train
from ee_jax.runtime import host_devices, parallel
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
  cfg = objectives.default_config()
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
  # sgd(1.0): the gradients are params - new params. Each gradient element is a sum over the
  # batch's pixels, n = 4 tiles x 2 dates x 10 x 10 = 800 terms at full resolution; 1 device
  # sums them in one order, 2 devices sum halves and then add the halves. Two orders of an
  # fp32 sum of n terms differ by at most 2(n-1) eps sum|t| (Higham, recursive summation);
  # sum|t| is not observable here, so the module's largest gradient stands in for it (terms
  # of a kernel and its bias share a scale, and a bias before GroupNorm has a gradient that
  # is exactly zero up to rounding). Comparing params instead, relative to each param, fails
  # wherever a small param gets a large gradient (seen: 6e-4 relative on another CPU).
  # A wrong gradient (a missing pmean, a device-dependent loss) is off by O(1) relative.
  bound = 2 * (800 - 1) * np.finfo(np.float32).eps
  grads = [jax.tree_util.tree_map(lambda p, q: np.asarray(p) - np.asarray(q), state.params, p)
           for p in (p1, p2)]
  modules = lambda tree: jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: (
      isinstance(x, dict) and all(not isinstance(v, dict) for v in x.values())))[0]
  for (path, g1), (_, g2) in zip(modules(grads[0]), modules(grads[1])):
    scale = max(np.abs(g).max() for g in g1.values())
    for name in g1:
      np.testing.assert_array_less(np.abs(g1[name] - g2[name]), bound * scale + 1e-30,
                                   err_msg=f"{jax.tree_util.keystr(path)}.{name}")
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


def test_host_far_ahead_of_two_devices_never_deadlocks(tmp_path):
  """200 all-gather steps of `parallel.pmap_step` queued without waiting (the host runs
  ahead, as under load) on 2 devices with one XLA client thread each, the fewest
  `host_devices` ever sets. With `jax.pmap` alone this hangs in the all-gather and XLA aborts
  the process after the 15 s timeout; the step's bounded dispatch keeps it going."""
  script = tmp_path / "ahead.py"
  script.write_text("""
import os, sys
from ee_jax.runtime import host_devices
host_devices.configure(2)
os.environ["XLA_FLAGS"] += (" --xla_cpu_collective_timeout_seconds=15"
                            " --xla_cpu_collective_call_terminate_timeout_seconds=15")
import jax, jax.numpy as jnp
from ee_jax.runtime import parallel
def f(x):
  for _ in range(4):
    x = jnp.tanh(x @ x) / 8
  return x + jax.lax.all_gather(x, "i").mean(0), {"a": x.sum(), "b": x.mean()}
step, x, seen = parallel.pmap_step(f, "i", donate_argnums=(0,)), jnp.ones((2, 384, 384)), []
for _ in range(200):
  x, m = step(x)
  seen.append({k: v.addressable_shards[0].data[0] for k, v in m.items()})
jax.block_until_ready((x, seen))
print("threads", os.environ["PJRT_NPROC"], "steps", len(seen))
""")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PJRT_NPROC")}
  env["PYTHONPATH"] = str(parallel.__file__).rsplit("/ee_jax/", 1)[0]
  env["PJRT_NPROC"] = "2"
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["threads", "2", "steps", "200"]


def test_bounded_dispatch_waits_for_the_oldest_unfinished_call(monkeypatch):
  """Before a call, the outputs of the call MAX_CALLS_IN_FLIGHT back are waited for; when
  every output of that call was donated to the next, the next one's are."""
  waited = []
  monkeypatch.setattr(parallel.jax, "block_until_ready",
                      lambda xs: waited.append(sorted(int(x) for x in xs)))
  calls = []

  def step(i):
    calls.append(i)
    return {"state": jax.numpy.asarray(100 + i), "metric": jax.numpy.asarray(i)}

  bounded = parallel.BoundedDispatch(step, max_in_flight=2)
  outs = [bounded(i) for i in range(4)]
  assert calls == [0, 1, 2, 3]
  assert waited == [[0, 100], [1, 101]]          # before calls 2 and 3: calls 0 and 1
  waited.clear()
  outs[2]["state"].delete()                       # call 2's outputs all donated to call 3
  outs[2]["metric"].delete()
  bounded(4)
  assert waited == [[3, 103]]                     # so call 3 is the one waited for
  waited.clear()
  bounded(5)                                      # one call (4) unfinished: no wait
  assert waited == []
  with pytest.raises(ValueError, match="max_in_flight"):
    parallel.BoundedDispatch(step, max_in_flight=0)


def test_host_devices_configure_keeps_what_the_user_set():
  env = {}
  assert host_devices.configure(2, env) == 2
  assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                 "PJRT_NPROC": str(max(host_devices.usable_cores(), 2))}
  env = {"XLA_FLAGS": "--foo --xla_force_host_platform_device_count=8", "PJRT_NPROC": "3"}
  assert host_devices.configure(2, env) == 8 and env["PJRT_NPROC"] == "3"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  host_devices.configure(environ=env)
  assert env["PJRT_NPROC"] == str(max(host_devices.usable_cores(), 3))
  env = {}
  assert host_devices.configure(environ=env) == 0 and env == {}     # one real device: as is
