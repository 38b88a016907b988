"""The backbones 'unet3d' (UNet3D) and 'temporal_attention': any T, unobserved dates ignored,
finite without data, bf16, attention weights, and pre-train -> fine-tune -> embed."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ee_jax import checkpoints, models
from ee_jax.models import temporal_attention
from tests.helpers import rand_params, tiny

MODES = ("unet3d", "temporal_attention")
LEGACY = {"unet3d": "conv3d", "temporal_attention": "attention"}  # their old `temporal`


def _apply(model, params, x, valid=None):
  return jax.jit(model.apply)({"params": params}, x, valid)


def _x(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("backbone", MODES)
def test_any_t_and_any_size(backbone):
  model = models.build_backbone(tiny(backbone=backbone, widths=(8, 8, 16)))
  params = rand_params(model, (1, 2, 16, 16, 3))
  for t, hw in ((1, (16, 16)), (3, (15, 13)), (5, (17, 11))):
    f = _apply(model, params, _x((2, t) + hw + (3,)), jnp.ones((2, t)))
    assert f.shape == (2,) + hw + (16,)
    assert np.isfinite(np.asarray(f)).all()


@pytest.mark.parametrize("backbone", MODES)
def test_unobserved_date_values_do_not_reach_the_output(backbone):
  model = models.build_backbone(tiny(backbone=backbone))
  params = rand_params(model, (1, 3, 16, 16, 3))
  x = _x((2, 3, 16, 16, 3))
  garbage = x.at[:, 1].set(1000.0)
  for valid in (jnp.array([[1., 0., 1.]] * 2),
                jnp.ones((2, 3, 16, 16)).at[:, 1].set(0.0)):    # per-date and per-pixel
    f_ref, f = _apply(model, params, x, valid), _apply(model, params, garbage, valid)
    np.testing.assert_allclose(f, f_ref, atol=1e-5)
    # ... while an observed date does matter (the test could fail).
    f_obs = _apply(model, params, garbage, jnp.ones_like(valid))
    assert np.abs(np.asarray(f_obs - f_ref)).max() > 1e-2


def test_conv3d_ignores_unobserved_pixels_of_an_observed_date():
  # Its inputs are zeroed where unobserved, so garbage there cannot leak through the convs.
  model = models.build_backbone(tiny(backbone="unet3d"))
  params = rand_params(model, (1, 2, 16, 16, 3))
  x = _x((1, 2, 16, 16, 3))
  valid = jnp.ones((1, 2, 16, 16)).at[:, 0, 4:9, 2:7].set(0.0)
  garbage = x.at[:, 0, 4:9, 2:7].set(-500.0)
  np.testing.assert_allclose(_apply(model, params, garbage, valid),
                             _apply(model, params, x, valid), atol=1e-5)


@pytest.mark.parametrize("backbone", MODES)
def test_pixel_with_no_observed_date_is_finite(backbone):
  model = models.build_backbone(tiny(backbone=backbone))
  params = rand_params(model, (1, 2, 16, 16, 3))
  x = _x((2, 2, 16, 16, 3))
  valid = jnp.ones((2, 2, 16, 16)).at[0, :, :8, :8].set(0.0)   # a corner never observed
  for v in (valid, jnp.zeros((2, 2)), jnp.zeros((2, 2, 16, 16))):
    assert np.isfinite(np.asarray(_apply(model, params, x, v))).all()


@pytest.mark.parametrize("backbone", MODES)
def test_bf16_compute_fp32_params(backbone):
  model = models.build_pretrain_model(tiny(backbone=backbone, dtype="bfloat16"))
  params = rand_params(model, (1, 2, 16, 16, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  z = _apply(model, params, _x((2, 3, 16, 16, 3)), jnp.ones((2, 3)))
  assert z.dtype == jnp.float32 and np.isfinite(np.asarray(z)).all()
  feats = _apply(models.build_backbone(tiny(backbone=backbone, dtype="bfloat16")),
                 params["backbone"], _x((1, 2, 16, 16, 3)))
  assert feats.dtype == jnp.bfloat16
  # bf16 compute tracks fp32 compute with the same params (bf16 keeps ~3 digits).
  f32 = _apply(models.build_backbone(tiny(backbone=backbone)), params["backbone"],
               _x((1, 2, 16, 16, 3)))
  assert np.abs(np.asarray(feats, np.float32) - np.asarray(f32)).max() < 0.1 * (
      np.abs(np.asarray(f32)).max() + 1)


def test_attention_weights_helper():
  scores = jnp.asarray([[3.0, 1.0, -2.0, 0.5], [2.0, 0.0, -1.0, 0.0]])[..., None]  # [B=2, T=4, 1]
  observed = jnp.asarray([[True, False, True, True], [False, False, False, False]])[..., None]
  w = np.asarray(temporal_attention.attention_weights(scores, observed))[..., 0]
  e = np.exp([3.0, -2.0, 0.5])
  np.testing.assert_allclose(w[0], [e[0] / e.sum(), 0.0, e[1] / e.sum(), e[2] / e.sum()],
                             rtol=1e-6)
  np.testing.assert_allclose(w[1], 0.25)                   # nothing observed: uniform
  np.testing.assert_allclose(
      temporal_attention.attention_weights(scores)[0, :, 0], jax.nn.softmax(scores[0, :, 0]))
  # Finite gradients through the masked softmax.
  g = jax.grad(lambda s: temporal_attention.attention_weights(s, observed)[0, 0, 0])(scores)
  assert np.isfinite(np.asarray(g)).all() and float(g[0, 1, 0]) == 0.0


def test_attention_module_weights_sum_to_one_and_skip_unobserved_dates():
  cfg = tiny(backbone="temporal_attention", attn_heads=2)
  model = models.build_backbone(cfg)
  params = rand_params(model, (1, 4, 16, 16, 3))
  valid = jnp.ones((2, 4, 16, 16)).at[0, 2].set(0.0).at[1, :, :8].set(0.0)
  _, state = jax.jit(lambda p, x, v: model.apply({"params": p}, x, v,
                                                 mutable=["intermediates"]))(
      params, _x((2, 4, 16, 16, 3)), valid)
  (w,) = state["intermediates"]["attention"]
  w = np.asarray(w)
  assert w.shape == (2, 4, 8, 8, 2)                         # bottleneck of widths (8, 16)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
  assert (w[0, 2] == 0.0).all() and (w[0, [0, 1, 3]] > 0).all()
  # Input rows 0-7 never observed: bottleneck rows 0-2 see none of them (row 3's footprint
  # reaches row 8) and are uniform; the others get learned weights.
  np.testing.assert_allclose(w[1, :, :3], 0.25, atol=1e-6)
  assert np.abs(w[1, :, 3:] - 0.25).min(axis=0).max() > 1e-3


def test_sinusoid_encoding():
  pe = np.asarray(temporal_attention.sinusoid_encoding(jnp.arange(3), 5, base=100.0))
  assert pe.shape == (3, 5)
  freq = 100.0 ** (-np.arange(3) / 3)
  np.testing.assert_allclose(pe[2, 0::2], np.sin(2 * freq), atol=1e-6)
  np.testing.assert_allclose(pe[2, 1::2], np.cos(2 * freq[:2]), atol=1e-6)


def test_param_names_and_counts():
  count = lambda m, s: models.count_params(jax.eval_shape(  # noqa: E731
      lambda: models.init_params(m, jax.random.key(0), s)))
  shared = models.build_backbone(tiny(temporal="shared"))
  base = count(shared, (1, 2, 16, 16, 3))                   # 7504, see test_models
  # conv3d: each encoder kernel gains a temporal tap (x3): enc0 3*(216+576), enc1 3*(1152+2304).
  assert count(models.build_backbone(tiny(backbone="unet3d")), (1, 2, 16, 16, 3)) == (
      base + 2 * (216 + 576 + 1152 + 2304))
  # attention: key Dense 16 -> 4 heads x 16 (+ bias) and the queries 4 x 16.
  attn = models.build_backbone(tiny(backbone="temporal_attention"))
  assert count(attn, (1, 2, 16, 16, 3)) == base + 16 * 64 + 64 + 64
  names = lambda m: set(jax.eval_shape(  # noqa: E731
      lambda: models.init_params(m, jax.random.key(0), (1, 2, 16, 16, 3))))
  assert names(models.build_backbone(tiny(backbone="unet3d"))) == names(shared)
  assert names(attn) == names(shared) | {"enc_attention"}


def test_bad_attention_heads_is_a_config_error():
  with pytest.raises(ValueError, match="attn_heads"):
    models.build_backbone(tiny(backbone="temporal_attention", attn_heads=3))


# ------------------------------------------------- pre-train -> fine-tune -> embed, end to end
@pytest.mark.parametrize("backbone", MODES)
def test_pretrain_finetune_and_embed(backbone, tmp_path_factory):
  from ee_jax.inference import engine
  from ee_jax.train.finetune import finetune
  from ee_jax.train.pretrain import pretrain
  from tests.helpers import tiny_finetune_config, tiny_labelled_pretrain_config

  data_dir = tmp_path_factory.getbasetemp() / "temporal_tfds"
  pre_dir, ft_dir = tmp_path_factory.mktemp("pre"), tmp_path_factory.mktemp("ft")
  c = tiny_labelled_pretrain_config(data_dir, steps=2)
  c.model.backbone = backbone
  pretrain(c, str(pre_dir))
  src, meta = checkpoints.load_params(str(pre_dir))
  assert meta["model"]["backbone"] == backbone

  f = tiny_finetune_config(data_dir, steps=1, freeze_backbone=True)
  f.init.checkpoint = str(pre_dir)
  finetune(f, str(ft_dir))
  tuned, ft_meta = checkpoints.load_params(str(ft_dir))
  assert ft_meta["model"]["backbone"] == backbone
  jax.tree_util.tree_map(np.testing.assert_array_equal, tuned["backbone"], src["backbone"])

  # Scene inference builds the backbone from the checkpoint's model config; any T works.
  loaded = engine.load_model(str(pre_dir), "embed")
  x = _x((1, 3, 16, 16, 4))
  out = loaded.apply(loaded.params, x, jnp.ones((1, 3, 16, 16)))
  assert out.shape == (1, 16, 16, int(ml_collections.ConfigDict(meta["model"]).features))
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("backbone", MODES)
def test_scene_inference_with_any_number_of_dates(backbone, tmp_path):
  from ee_jax import inference
  from tests.helpers import FAST, field_scene, read, save_checkpoint, write_product

  # test_inference's checkpoints name the backbone the old way (`temporal`), as older
  # checkpoints' metadata does: it must still build the backbone.
  ckpt = save_checkpoint(tmp_path / "ckpt", num_dates=1, temporal=LEGACY[backbone])  # 1 date
  name = "S2B_MSIL2A_2021{}T100000_N0300_R122_T33TUM_x"
  a = write_product(tmp_path / name.format("0510"), field_scene(40, 36))
  img = field_scene(40, 36, seed=1)
  img[:, :12] = 0                                            # second date: left part nodata
  b = write_product(tmp_path / name.format("0615"), img)
  inference.predict_scene(ckpt, f"{a},{b}", str(tmp_path / "ts.tif"), **FAST)
  classes = read(tmp_path / "ts.tif", indexes=1)
  assert classes.shape == (40, 36) and (classes != 255).all()
