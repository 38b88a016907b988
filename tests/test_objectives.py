"""The pre-training objectives besides InfoNCE: masking, reconstruction, VICReg, prototypes
(values against hand-computed and numpy cases, device-count independence, the selection)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ee_jax import models, objectives
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError
from ee_jax.objectives import barlow, masked, prototypes, vicreg


def _mask_cfg(**kw):
  c = masked.default_config()
  c.update(dict(date_ratio=0.0, band_ratio=0.0, patch_ratio=0.0), **kw)
  return c


def test_hide_mask_parts():
  key = jax.random.key(0)
  t, s, c = 5, 8, 12
  assert not np.asarray(masked.hide_mask(key, t, s, c, _mask_cfg())).any()
  # Every date but one hidden, whole dates only.
  m = np.asarray(masked.hide_mask(key, t, s, c, _mask_cfg(date_ratio=1.0)))
  per_date = m.reshape(t, -1)
  assert sorted(per_date.all(axis=1)) == [False] + [True] * (t - 1)
  assert not per_date[~per_date.all(axis=1)].any()
  # Band groups: 4 contiguous groups of 3 bands, hidden per date as a whole.
  m = np.asarray(masked.hide_mask(key, t, s, c, _mask_cfg(band_ratio=0.5, band_groups=4)))
  bands = m[:, 0, 0, :]                                            # [T, C]
  assert (m == bands[:, None, None, :]).all()                      # same at every pixel
  groups = bands.reshape(t, 4, 3)
  assert (groups.all(axis=-1) == groups.any(axis=-1)).all()
  assert 0 < bands.mean() < 1
  # Patches: 4x4 blocks, the same on every date and band.
  m = np.asarray(masked.hide_mask(key, t, s, c, _mask_cfg(patch_ratio=0.5, patch_size=4)))
  assert (m == m[:1, :, :, :1]).all()
  blocks = m[0, :, :, 0].reshape(2, 4, 2, 4)
  assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()
  # More groups than bands: one band a group.
  m = np.asarray(masked.hide_mask(key, t, 4, 2, _mask_cfg(band_ratio=0.5, band_groups=4)))
  assert m.shape == (t, 4, 4, 2) and 0 < m.mean() < 1
  with pytest.raises(ConfigError, match="band_groups"):
    masked.hide_mask(key, t, s, c, _mask_cfg(band_groups=0))


def test_hide_zeroes_values_and_unobserves_fully_hidden_dates():
  b, t, s, c = 2, 3, 4, 2
  view = dict(image=jnp.ones((b, t, s, s, c)), date_valid=jnp.ones((b, t, s, s), bool))
  keys = jax.random.split(jax.random.key(1), b)
  out, hidden = masked.hide(keys, view, _mask_cfg(date_ratio=0.5, band_ratio=0.5,
                                                   band_groups=2, patch_ratio=0.3,
                                                   patch_size=2))
  hidden = np.asarray(hidden)
  np.testing.assert_array_equal(np.asarray(out["image"]), np.where(hidden, 0.0, 1.0))
  np.testing.assert_array_equal(np.asarray(out["date_valid"]), ~hidden.all(axis=-1))


def test_reconstruction_loss_counts_unseen_observed_values_only():
  b, t, s, c = 1, 2, 2, 3
  clean = np.zeros((b, t, s, s, c), np.float32)
  recon_btssc = np.zeros_like(clean)
  recon_btssc[0, 1, 0, 0, 2] = 3.0      # hidden and observed: counts, error 9
  recon_btssc[0, 0, 1, 1, 0] = 5.0      # seen: counts only through visible_weight
  recon_btssc[0, 1, 1, 0, 1] = 7.0      # hidden but never observed: no target
  hidden = np.zeros(clean.shape, bool)
  hidden[0, 1] = True                   # date 1 hidden everywhere
  observed = np.ones((b, t, s, s), bool)
  observed[0, 1, 1, 0] = False
  date_valid = ~hidden.all(axis=-1)
  recon = np.transpose(recon_btssc, (0, 2, 3, 1, 4)).reshape(b, s, s, t * c)  # stack layout
  n_hidden = 3 * c                      # date 1: 4 pixels, one unobserved
  loss, m = masked.reconstruction_loss(recon, clean, observed, date_valid, hidden,
                                       _mask_cfg())
  np.testing.assert_allclose(loss, 9.0 / n_hidden, rtol=1e-6)
  n_seen = 4 * c
  loss, m = masked.reconstruction_loss(recon, clean, observed, date_valid, hidden,
                                       _mask_cfg(visible_weight=0.5))
  np.testing.assert_allclose(loss, 9.0 / n_hidden + 0.5 * 25.0 / n_seen, rtol=1e-6)
  np.testing.assert_allclose(m["masked_seen"], 25.0 / n_seen, rtol=1e-6)
  # A date unobserved in the view (e.g. a synthetic cloud) is unseen even if not hidden.
  date_valid2 = date_valid.copy()
  date_valid2[0, 0, 1, 1] = False
  loss, _ = masked.reconstruction_loss(recon, clean, observed, date_valid2, hidden, _mask_cfg())
  np.testing.assert_allclose(loss, (9.0 + 25.0) / (n_hidden + c), rtol=1e-6)


def test_spectral_shape_is_brightness_free_and_standardised_per_band():
  rng = np.random.default_rng(3)
  mean, std = np.array([1000.0, 2000.0, 500.0], np.float32), np.array([300.0, 600.0, 200.0],
                                                                       np.float32)
  dn = rng.uniform(200, 4000, size=(2, 3, 4, 4, 3)).astype(np.float32)
  observed = rng.random((2, 3, 4, 4)) > 0.2
  shape = np.asarray(masked.spectral_shape((dn - mean) / std, observed, mean, std))
  # By hand: (x_c - m) / (x_c + m + 1), m the mean over bands; standardised per band over
  # the observed pixels; unobserved pixels 0.
  m = dn.mean(-1, keepdims=True)
  raw = (dn - m) / (dn + m + 1.0)
  obs = raw[observed]
  want = (raw - obs.mean(0)) / np.sqrt(obs.var(0) + 1e-6)
  np.testing.assert_allclose(shape[observed], want[observed], rtol=1e-3, atol=1e-4)
  assert (shape[~observed] == 0).all()
  # Twice as bright, the same shape (up to the +1 DN in the denominator: relative ~1/m).
  bright = np.asarray(masked.spectral_shape((2 * dn - mean) / std, observed, mean, std))
  np.testing.assert_allclose(bright, shape, atol=2e-2)
  assert np.abs(shape[observed]).max() > 0.5   # not trivially zero


def test_masked_shape_weight_adds_the_shape_error():
  b, t, s, c = 2, 2, 4, 3
  rng = np.random.default_rng(4)
  clean = rng.normal(size=(b, t, s, s, c)).astype(np.float32)
  observed = np.ones((b, t, s, s), bool)
  date_valid = np.ones((b, t, s, s), bool)
  hidden = rng.random((b, t, s, s, c)) > 0.5
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  recon = rng.normal(size=(b, s, s, t * c)).astype(np.float32)
  recon_shape = rng.normal(size=(b, s, s, t * c)).astype(np.float32)
  cfg = _mask_cfg(shape_weight=0.5, visible_weight=1.0)
  shared = objectives.Shared(
      out={"recon": recon, "recon_shape": recon_shape},
      view={"clean": clean, "observed": observed, "date_valid": date_valid}.__getitem__,
      extras={"hidden": hidden}, mean=mean, std=std)
  loss, m = masked.OBJECTIVE.loss(shared, ml_collections.ConfigDict({"masked": cfg}), None)
  target = masked.spectral_shape(clean, observed, mean, std)
  plain, _ = masked.reconstruction_loss(recon, clean, observed, date_valid, hidden, cfg)
  extra, _ = masked.reconstruction_loss(recon_shape, target, observed, date_valid, hidden, cfg)
  np.testing.assert_allclose(loss, plain + 0.5 * extra, rtol=1e-6)
  assert float(extra) > 0.5 and "masked_shape" in m


def _vicreg_reference(p1, p2, w, cfg):
  x1, x2 = p1[w], p2[w]
  inv = np.mean((x1 - x2) ** 2)
  terms = []
  for x in (x1, x2):
    cov = np.cov(x, rowvar=False)
    std = np.sqrt(np.diag(cov) + 1e-4)
    off = (cov ** 2).sum() - (np.diag(cov) ** 2).sum()
    terms.append((np.maximum(0, 1 - std).mean(), off / x.shape[1]))
  var = np.mean([v for v, _ in terms])
  cov = np.mean([c for _, c in terms])
  return cfg.invariance * inv + cfg.variance * var + cfg.covariance * cov


def test_vicreg_matches_numpy_and_penalises_collapse():
  rng = np.random.default_rng(0)
  b, n, e = 3, 10, 6
  p1 = rng.normal(size=(b, n, e)).astype(np.float32) * 0.7
  p2 = (p1 + 0.2 * rng.normal(size=p1.shape)).astype(np.float32)
  w = rng.random((b, n)) > 0.3
  cfg = vicreg.default_config()
  loss, m = vicreg.vicreg_loss(p1, p2, w, cfg)
  np.testing.assert_allclose(loss, _vicreg_reference(p1, p2, w, cfg), rtol=1e-4)
  collapsed = np.ones((b, n, e), np.float32)
  loss_c, m_c = vicreg.vicreg_loss(collapsed, collapsed, w, cfg)
  np.testing.assert_allclose(m_c["vicreg_var"], 1 - np.sqrt(1e-4), rtol=1e-5)
  assert float(m_c["vicreg_inv"]) == 0.0


def _barlow_reference(p1, p2, w, redundancy):
  x1, x2 = p1[w].astype(np.float64), p2[w].astype(np.float64)
  z1 = (x1 - x1.mean(0)) / np.sqrt(x1.var(0) + 1e-6)
  z2 = (x2 - x2.mean(0)) / np.sqrt(x2.var(0) + 1e-6)
  c = z1.T @ z2 / len(x1)
  e = c.shape[0]
  off = c - np.diag(np.diag(c))
  return (((1 - np.diag(c)) ** 2).sum() + redundancy / e * (off ** 2).sum()) / e


def test_barlow_matches_numpy_and_is_zero_only_for_decorrelated_agreeing_views():
  rng = np.random.default_rng(2)
  b, n, e = 3, 40, 5
  p1 = rng.normal(size=(b, n, e)).astype(np.float32) * 2.0 + 1.0
  p2 = (0.5 * p1 + 0.3 * rng.normal(size=p1.shape)).astype(np.float32)
  w = rng.random((b, n)) > 0.3
  cfg = barlow.default_config()
  cfg.redundancy = 2.0
  loss, m = barlow.barlow_loss(p1, p2, w, cfg)
  np.testing.assert_allclose(loss, _barlow_reference(p1, p2, w, 2.0), rtol=1e-4)
  # Identical views whose dimensions are uncorrelated: C = I exactly (up to the 1e-6 in
  # the std), so the loss is ~0; scaling a view changes nothing (standardised).
  x = rng.normal(size=(b * n, e))
  q, _ = np.linalg.qr(x - x.mean(0))   # columns: centred (combinations of centred ones), orthonormal
  white = q.reshape(b, n, e).astype(np.float32)
  all_in = np.ones((b, n), bool)
  loss_w, m_w = barlow.barlow_loss(white, 3.0 * white, all_in, cfg)
  assert float(loss_w) < 1e-3 and abs(float(m_w["barlow_agree"]) - 1.0) < 1e-3
  # Collapse to one direction: every off-diagonal correlation is 1.
  one = np.repeat(rng.normal(size=(b, n, 1)), e, axis=-1).astype(np.float32)
  loss_c, m_c = barlow.barlow_loss(one, one, all_in, cfg)
  np.testing.assert_allclose(m_c["barlow_off"], 1.0, rtol=1e-3)
  assert float(loss_c) > 1.0


def test_sinkhorn_codes_sum_to_one_and_use_prototypes_equally():
  rng = np.random.default_rng(1)
  k, p = 40, 4
  scores = jnp.asarray(rng.uniform(-1, 1, (k, p)), jnp.float32)
  w = jnp.asarray(rng.random(k) > 0.25, jnp.float32)
  q = np.asarray(prototypes.sinkhorn(scores, w, epsilon=0.5, iters=50))
  counted = np.asarray(w) > 0
  np.testing.assert_allclose(q[counted].sum(axis=1), 1.0, rtol=1e-5)
  assert (q[~counted] == 0).all()
  np.testing.assert_allclose(q.sum(axis=0), counted.sum() / p, rtol=1e-3)


def _pair_case(seed=4):
  rng = np.random.default_rng(seed)
  b, n, e_in, e = 4, 6, 5, 8
  x1 = rng.normal(size=(b, n, e_in)).astype(np.float32)
  x2 = (x1 + 0.3 * rng.normal(size=x1.shape)).astype(np.float32)
  mask = rng.random((b, n)) > 0.3
  weights = rng.normal(size=(e_in, e)).astype(np.float32)
  return weights, x1, x2, mask


@pytest.mark.parametrize("name", ["vicreg", "prototypes", "barlow"])
def test_two_devices_equal_one_device_loss_and_grads(name):
  weights, x1, x2, mask = _pair_case()
  centres = np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32)

  def loss_fn(wts, x1, x2, mask, axis_name):
    if name == "vicreg":
      return vicreg.vicreg_loss(x1 @ wts, x2 @ wts, mask, vicreg.default_config(), axis_name)
    if name == "barlow":
      return barlow.barlow_loss(x1 @ wts, x2 @ wts, mask, barlow.default_config(), axis_name)
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)   # noqa: E731
    c = unit(jnp.asarray(centres))
    cfg = prototypes.default_config()
    cfg.temperature = 0.5
    return prototypes.prototype_loss(unit(x1 @ wts) @ c.T, unit(x2 @ wts) @ c.T, mask, cfg,
                                     axis_name)

  (loss, m), grad = jax.value_and_grad(loss_fn, has_aux=True)(weights, x1, x2, mask, None)

  def per_device(wts, x1, x2, mask):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(wts, x1, x2, mask, parallel.AXIS)
    return jax.lax.pmean((loss, m, g), parallel.AXIS)

  loss2, m2, grad2 = parallel.unreplicate(parallel.pmap_step(per_device)(
      parallel.replicate(weights), *parallel.shard((x1, x2, mask))))
  # fp32 sums in another order (per device, then across): relative error ~ K * 2^-24.
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  for key in m:
    np.testing.assert_allclose(m2[key], m[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(grad2, grad, rtol=1e-4, atol=1e-6)


def test_active_objectives_and_heads():
  assert objectives.names() == ("infonce", "masked", "vicreg", "prototypes", "barlow")
  cfg = objectives.default_config()
  assert objectives.active(cfg) == {"infonce": 1.0}
  assert objectives.heads(cfg) == ()
  cfg.weights.masked = 0.5
  cfg.weights.prototypes = 0.1
  assert objectives.active(cfg) == {"infonce": 1.0, "masked": 0.5, "prototypes": 0.1}
  assert [dict(h.options) for h in objectives.heads(cfg)] == [
      {"hidden": cfg.masked.hidden, "shape": False}, {"num": cfg.prototypes.num}]
  assert objectives.active(ml_collections.ConfigDict({"num_anchors": 4})) == {"infonce": 1.0}
  # Older runs' configs name the removed `latent` objective with weight 0: nothing to turn on.
  assert objectives.active(ml_collections.ConfigDict(
      {"weights": {"infonce": 1.0, "latent": 0.0}})) == {"infonce": 1.0}
  with pytest.raises(ConfigError, match="unknown objectives"):
    objectives.active(ml_collections.ConfigDict({"weights": {"infonse": 1.0}}))
  with pytest.raises(ConfigError, match="every weight is 0"):
    objectives.active(ml_collections.ConfigDict({"weights": {"infonce": 0.0}}))


def test_heads_exist_only_for_their_objectives():
  mcfg = models.default_config()
  mcfg.update(widths=(8,), features=8, proj_dim=8)
  lcfg = objectives.default_config()
  shape = (1, 3, 8, 8, 2)
  plain = models.init_params(models.build_pretrain_model(mcfg, lcfg), jax.random.key(0),
                             shape, with_valid=True)
  assert set(plain) == {"backbone", "head"}   # as before: old checkpoints still restore
  lcfg.weights.update(masked=1.0, prototypes=1.0)
  model = models.build_pretrain_model(mcfg, lcfg)
  params = models.init_params(model, jax.random.key(0), shape, with_valid=True)
  assert set(params) == {"backbone", "head", "recon", "prototypes"}
  x = jax.random.normal(jax.random.key(1), shape)
  out = model.apply({"params": params}, x, jnp.ones(shape[:4]), all_outputs=True)
  assert out["recon"].shape == (1, 8, 8, 3 * 2)
  assert out["scores"].shape == (1, 8, 8, lcfg.prototypes.num)
  np.testing.assert_allclose(np.linalg.norm(out["z"], axis=-1), 1.0, rtol=1e-5)
