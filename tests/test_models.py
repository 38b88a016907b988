"""UNet backbone, heads and wrappers: shapes, temporal modes, param counts, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ee_jax import models
from ee_jax.errors import ConfigError
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


def test_head_input_is_the_baselines_pixel_features():
  """'raw3x3' puts beside the features exactly what the classical baselines classify: every
  date's normalised bands and their 3x3 mean (edges replicated)."""
  from ee_jax.baselines.features import smoothed
  from ee_jax.models.input_beside import input_channels
  x = np.random.default_rng(0).normal(size=(2, 3, 8, 7, 4)).astype(np.float32)
  raw = np.transpose(x, (0, 2, 3, 1, 4)).reshape(2, 8, 7, 12)
  np.testing.assert_allclose(input_channels(jnp.asarray(x), "raw"), raw)
  np.testing.assert_allclose(input_channels(jnp.asarray(x), "raw3x3"),
                             np.concatenate([raw, smoothed(raw)], -1), rtol=1e-6, atol=1e-6)
  # by hand: a corner pixel's mean over its replicated neighbourhood
  corner = (4 * raw[0, 0, 0] + 2 * raw[0, 0, 1] + 2 * raw[0, 1, 0] + raw[0, 1, 1]) / 9
  np.testing.assert_allclose(input_channels(jnp.asarray(x), "raw3x3")[0, 0, 0, 12:], corner,
                             rtol=1e-5, atol=1e-6)
  assert input_channels(jnp.asarray(x), "") is None


def test_segmentation_head_sees_the_input_beside_the_features():
  """With the head's weights on the features zeroed, the logits are a linear function of
  the input's channels alone: the head really reads them, in the order documented."""
  cfg = models.default_config()
  cfg.widths, cfg.features, cfg.num_groups, cfg.head_input = (8, 16), 16, 4, "raw"
  model = models.build_segmentation_model(cfg, 3)
  x = np.random.default_rng(1).normal(size=(1, 2, 8, 8, 4)).astype(np.float32)
  params = models.init_params(model, jax.random.PRNGKey(0), x.shape, with_valid=True)
  kernel = np.array(params["head"]["Conv_0"]["kernel"])
  assert kernel.shape == (1, 1, 16 + 2 * 4, 3)
  kernel[:, :, :16] = 0.0
  params = {**params, "head": {"Conv_0": {**params["head"]["Conv_0"], "kernel": kernel}}}
  logits = model.apply({"params": params}, x, np.ones(x.shape[:4], np.float32))
  raw = np.transpose(x, (0, 2, 3, 1, 4)).reshape(1, 8, 8, 8)
  want = raw @ kernel[0, 0, 16:] + np.asarray(params["head"]["Conv_0"]["bias"])
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_bad_head_input_names_the_key():
  cfg = models.default_config()
  cfg.head_input = "rgb"
  with pytest.raises(ConfigError, match="config.model.head_input: unknown 'rgb'"):
    models.build_segmentation_model(cfg, 3)


def test_a_run_takes_its_own_head_input_over_the_checkpoints():
  """The architecture of a checkpoint, the run's compute and head choices; a key the run's
  config lacks (an older config) gets its default."""
  import ml_collections
  ckpt = models.default_config().to_dict()
  ckpt.update(head_input="raw", dtype="bfloat16", conv_impl="matmul", features=99)
  ckpt = ml_collections.ConfigDict(ckpt)
  run = models.default_config()
  run.head_input = "raw3x3"
  models.take_run_choices(ckpt, run)
  assert (ckpt.head_input, ckpt.dtype, ckpt.conv_impl, ckpt.features) == (
      "raw3x3", "float32", "auto", 99)
  old = ml_collections.ConfigDict({"dtype": "float32"})
  models.take_run_choices(ckpt, old)
  assert (ckpt.head_input, ckpt.conv_impl) == ("", "auto")
