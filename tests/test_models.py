"""UNet backbone, heads and wrappers: shapes, temporal modes, param counts, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ee_jax import models
from tests.helpers import rand_params, tiny


def _out(model, shape, valid=None):
  params = rand_params(model, shape)
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  return params, jax.jit(model.apply)({"params": params}, x, valid)


@pytest.mark.parametrize("temporal,t", [("stack", 2), ("shared", 3)])
@pytest.mark.parametrize("hw,widths", [((16, 16), (8, 16)), ((15, 13), (8, 16)),
                                       ((17, 11), (8, 8, 16))])
def test_backbone_shapes_any_size(temporal, t, hw, widths):
  # SAME pooling + resize to the skip's size: no divisibility requirement on H, W.
  model = models.build_backbone(tiny(temporal=temporal, widths=widths))
  _, f = _out(model, (2, t) + hw + (3,))
  assert f.shape == (2,) + hw + (16,)
  assert np.isfinite(np.asarray(f)).all()


def test_shared_any_t_and_masked_mean_ignores_invalid_dates():
  model = models.build_backbone(tiny(temporal="shared"))
  x0 = jnp.asarray(np.random.default_rng(2).normal(size=(2, 1, 16, 16, 3)), jnp.float32)
  params = rand_params(model, (1, 2, 16, 16, 3))
  f_ref = jax.jit(model.apply)({"params": params}, jnp.concatenate([x0, x0], 1))
  garbage = 100.0 * jnp.ones_like(x0)
  x = jnp.concatenate([x0, garbage, x0], 1)                     # T=3 with a T=2 init
  for valid in (jnp.array([[1., 0., 1.]] * 2),
                jnp.ones((2, 3, 16, 16)).at[:, 1].set(0.0)):    # per-date and per-pixel
    f = jax.jit(model.apply)({"params": params}, x, valid)
    np.testing.assert_allclose(f, f_ref, atol=1e-4)
  # A pixel observed on no date falls back to the plain mean: finite.
  f = jax.jit(model.apply)({"params": params}, x, jnp.zeros((2, 3)))
  assert np.isfinite(np.asarray(f)).all()


def test_max_pool_and_stack_valid():
  model = models.build_backbone(tiny(temporal="shared", temporal_pool="max"))
  _, f = _out(model, (2, 2, 12, 12, 3), valid=jnp.array([[1., 0.], [0., 0.]]))
  assert np.isfinite(np.asarray(f)).all()
  model = models.build_backbone(tiny(temporal="stack"))
  _, f = _out(model, (2, 2, 12, 12, 3), valid=jnp.ones((2, 2, 12, 12)))
  assert f.shape == (2, 12, 12, 16)


def test_param_counts():
  # Hand count for widths (8, 16), D=16, C=3, T=1, two convs per block:
  # enc0 224+16+584+16, enc1 1168+32+2320+32, up0 1160, dec0 1160+16+584+16, out 144+32.
  count = lambda m, s: models.count_params(jax.eval_shape(  # noqa: E731
      lambda: models.init_params(m, jax.random.key(0), s)))
  assert count(models.build_backbone(tiny()), (1, 1, 16, 16, 3)) == 7504
  # 'stack' grows only the first conv with T; 'shared' does not grow at all.
  assert count(models.build_backbone(tiny()), (1, 2, 16, 16, 3)) == 7504 + 3 * 9 * 8
  assert count(models.build_backbone(tiny(temporal="shared")), (1, 4, 16, 16, 3)) == 7504
  # projection head D -> D -> 128 with D=16: 16*16+16 + 16*16+16.
  assert count(models.build_pretrain_model(tiny()), (1, 1, 16, 16, 3)) == 7504 + 544
  # The documented default small model (10 S2 bands, one date).
  assert count(models.build_backbone(models.default_config()), (1, 1, 64, 64, 10)) == 2147680


def test_wrappers_share_backbone_key_and_heads():
  cfg = tiny()
  pre, seg = models.build_pretrain_model(cfg), models.build_segmentation_model(cfg, 5)
  p_pre, z = _out(pre, (2, 1, 16, 16, 3))
  p_seg, logits = _out(seg, (2, 1, 16, 16, 3))
  assert set(p_pre) == set(p_seg) == {models.BACKBONE, models.HEAD}
  assert (jax.tree_util.tree_structure(p_pre["backbone"]) ==
          jax.tree_util.tree_structure(p_seg["backbone"]))
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, atol=1e-5)
  assert z.shape == (2, 16, 16, 16) and logits.shape == (2, 16, 16, 5)
  # Partial restore: the pretrained backbone drops into the segmentation model as is.
  restored = dict(p_seg, backbone=p_pre["backbone"])
  f = jax.jit(seg.apply)({"params": restored}, jnp.zeros((1, 1, 16, 16, 3)))
  assert f.shape == (1, 16, 16, 5)


def test_bf16_compute_fp32_params():
  model = models.build_pretrain_model(tiny(dtype="bfloat16"))
  params, z = _out(model, (2, 1, 16, 16, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  assert z.dtype == jnp.float32 and np.isfinite(np.asarray(z)).all()
  feats = jax.jit(models.build_backbone(tiny(dtype="bfloat16")).apply)(
      {"params": params["backbone"]}, jnp.ones((1, 1, 16, 16, 3)))
  assert feats.dtype == jnp.bfloat16


def test_bad_config_errors():
  with pytest.raises(ValueError, match="temporal"):
    _out(models.build_backbone(tiny(temporal="lstm")), (1, 1, 8, 8, 3))
  with pytest.raises(ValueError, match="dtype"):
    models.build_backbone(tiny(dtype="float16"))


def test_pixel_norm_stats_make_features_independent_of_the_rest_of_the_tile():
  cfg = models.default_config()
  cfg.update(widths=(8, 16), features=8, num_groups=4)
  x = np.random.default_rng(0).normal(size=(1, 1, 24, 24, 3)).astype(np.float32)
  far = x.copy()
  far[..., 16:, 16:, :] += 5.0                 # change a corner far from pixel (2, 2)
  for stats, independent in (("pixel", True), ("tile", False)):
    cfg.norm_stats = stats
    bb = models.build_backbone(cfg)
    params = bb.init(jax.random.key(0), x)["params"]
    a, b = bb.apply({"params": params}, x), bb.apply({"params": params}, far)
    same = np.allclose(np.asarray(a)[0, :3, :3], np.asarray(b)[0, :3, :3], atol=1e-5)
    assert same == independent, stats
