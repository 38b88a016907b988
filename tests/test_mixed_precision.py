"""Mixed precision (`config.model.dtype = 'bfloat16'`): bf16 compute, fp32 params and optimiser
state; the pre-training and fine-tuning steps stay finite and close to fp32 from the same
weights on the same batches."""

import jax
import numpy as np
import pytest

from ee_jax import augment, models, objectives
from ee_jax.runtime import parallel
from ee_jax.train import finetune, optim
from ee_jax.train.pretrain import init_state, make_pretrain_step
from ee_jax.train.state import TrainState

INIT_KEY = jax.random.key(0, impl="rbg")  # cheap to compile; the draw does not matter here
C, T, SIZE, K = 3, 2, 16, 4
MEAN, STD = np.full(C, 1000.0, np.float32), np.full(C, 300.0, np.float32)


def _model_config(dtype):
  cfg = models.default_config()
  cfg.update(widths=(8, 16), features=32, proj_dim=16, num_groups=4, dtype=dtype)
  return cfg


def _tiles(b, seed=0):
  """Structured tiles (4x4 patches + texture) and a label map that follows the patches."""
  rng = np.random.default_rng(seed)
  base = np.kron(rng.normal(size=(b, T, SIZE // 4, SIZE // 4, C)), np.ones((1, 1, 4, 4, 1)))
  image = np.clip(1000 + 300 * (base + 0.3 * rng.normal(size=base.shape)), 0, None)
  label = (base[:, 0, :, :, 0] > 0).astype(np.uint8) + 2 * (base[:, 0, :, :, 1] > 0)
  label[:, :2, :2] = 255  # some ignored pixels
  return dict(image=image.astype(np.uint16), valid=np.ones((b, T, SIZE, SIZE), bool),
              label=label.astype(np.uint8), index=np.arange(b))


def _optimizer(steps):
  cfg = optim.default_config()
  cfg.update(learning_rate=3e-3, warmup_steps=1)
  return optim.make_optimizer(cfg, steps)


def _float_leaves(tree):
  return [x for x in jax.tree_util.tree_leaves(tree) if np.issubdtype(x.dtype, np.floating)]


def _assert_fp32_state(state):
  leaves = _float_leaves(state.params) + _float_leaves(state.opt_state)
  assert leaves and all(x.dtype == np.float32 for x in leaves), {x.dtype for x in leaves}
  assert len(_float_leaves(state.opt_state)) >= 2 * len(_float_leaves(state.params))  # mu, nu


def _run(make_step, state, batch, steps):
  """`steps` pmapped steps on 2 devices; (per-step host metrics, final host state)."""
  step = parallel.pmap_step(make_step, donate_argnums=(0,))
  p_state, key = parallel.replicate(state), parallel.replicate(jax.random.key(1))
  batch = parallel.shard(batch)
  history = []
  for _ in range(steps):
    p_state, m = step(p_state, batch, key)
    history.append({k: float(v) for k, v in parallel.unreplicate(m).items()})
  return history, jax.device_get(parallel.unreplicate(p_state))


def _close(h16, h32, rtols: dict):
  for a, b in zip(h16, h32):
    for k, rtol in rtols.items():
      assert np.isfinite(a[k]) and np.isfinite(b[k]), k
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, err_msg=k)


def _update_cosine(before, after16, after32) -> float:
  """Cosine between the bf16 and the fp32 runs' total parameter updates."""
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])  # noqa: E731
  u16, u32 = flat(after16) - flat(before), flat(after32) - flat(before)
  return float(u16 @ u32 / (np.linalg.norm(u16) * np.linalg.norm(u32)))


def _pretrain_in_both_dtypes(lcfg, steps):
  """(initial state, {dtype: (history, final state)}) of `steps` pre-training steps from the
  same fp32 weights in fp32 and bf16 compute (params do not depend on the compute dtype)."""
  tx, schedule = _optimizer(steps)
  aug = augment.AugmentConfig(crop_size=12)
  lcfg.update(num_anchors=32, temperature=0.2)
  state = init_state(models.build_pretrain_model(_model_config("float32"), lcfg), tx,
                     INIT_KEY, aug, (T, SIZE, SIZE, C))
  batch = {k: v for k, v in _tiles(4).items() if k != "label"}
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = models.build_pretrain_model(_model_config(dtype), lcfg)
    out[dtype] = _run(make_pretrain_step(model, tx, schedule, MEAN, STD, aug, lcfg),
                      state, batch, steps)
  return state, out


def test_pretrain_bf16_close_to_fp32_with_fp32_params_and_opt_state():
  state, out = _pretrain_in_both_dtypes(objectives.default_config(), steps=3)
  (h32, s32), (h16, s16) = out["float32"], out["bfloat16"]
  _assert_fp32_state(s16)
  # Measured: losses within 0.2 %, cosines within 0.3 %, gradient norms within 8 %.
  _close(h16, h32, {"loss": 1e-2, "pos_cos": 1e-2, "neg_cos": 1e-2, "grad_norm": 0.15})
  assert _update_cosine(state.params, s16.params, s32.params) > 0.9  # measured 0.96


def test_pretrain_masked_and_pair_objectives_bf16_close_to_fp32():
  """Every objective's head and loss under bf16 compute: fp32 params, losses near fp32's."""
  lcfg = objectives.default_config()
  lcfg.weights.update(infonce=1.0, masked=1.0, vicreg=1.0, prototypes=1.0)
  _, out = _pretrain_in_both_dtypes(lcfg, steps=2)
  (h16, s16), (h32, _) = out["bfloat16"], out["float32"]
  _assert_fp32_state(s16)
  # bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op): a few % after the network.
  _close(h16, h32, {"loss": 3e-2, "masked": 3e-2, "infonce": 3e-2, "vicreg_inv": 0.1})


def test_finetune_bf16_close_to_fp32_with_fp32_params_and_opt_state():
  steps = 2
  tx, schedule = _optimizer(steps)
  params = models.init_params(models.build_segmentation_model(_model_config("float32"), K),
                              INIT_KEY, (1, T, SIZE, SIZE, C), with_valid=True)
  state = TrainState.create(params, tx)
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = models.build_segmentation_model(_model_config(dtype), K)
    out[dtype] = _run(finetune.make_step(model, tx, schedule, MEAN, STD, K, 255),
                      state, _tiles(4, seed=1), steps)
  (h32, s32), (h16, s16) = out["float32"], out["bfloat16"]
  _assert_fp32_state(s16)
  _close(h16, h32, {"loss": 1e-2, "grad_norm": 5e-2})  # measured: 0.05 %, 0.6 %
  assert abs(h16[-1]["pixel_acc"] - h32[-1]["pixel_acc"]) < 0.02
  assert _update_cosine(params, s16.params, s32.params) > 0.9


def test_unknown_dtype_is_a_config_error():
  with pytest.raises(Exception, match="dtype"):
    models.build_pretrain_model(_model_config("float16"))


def test_study_applies_its_compute_dtype_to_pretraining_and_every_run():
  """`--config.model.dtype=bfloat16` on a study: its pre-training and its fine-tuning runs
  (which otherwise take the whole model config, dtype included, from the pre-training)."""
  from configs import study_synthetic  # pylint: disable=import-outside-toplevel
  from ee_jax import study  # pylint: disable=import-outside-toplevel
  config = study_synthetic.get_config("smoke")
  config.model.dtype = "bfloat16"
  assert study.pretrain_config_for(config).model.dtype == "bfloat16"
  pretrained = dict(_model_config("float32").to_dict(), widths=(4, 8))
  for init in study.INITS:
    run = study.run_config(config, 0.5, init, 0, "/pretrain", pretrained)
    assert run.model.dtype == "bfloat16" and tuple(run.model.widths) == (4, 8), init


def test_inference_computes_in_the_checkpoint_dtype(tmp_path):
  """Scene inference builds the model of the checkpoint's config: a bf16-trained model
  runs in bf16 on fp32 params, and returns fp32."""
  from ee_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from ee_jax.inference import engine  # pylint: disable=import-outside-toplevel
  cfg = _model_config("bfloat16")
  params = models.init_params(models.build_segmentation_model(cfg, K), INIT_KEY,
                              (1, T, SIZE, SIZE, C), with_valid=True)
  meta = {"kind": "finetune", "bands": ["B1", "B2", "B3"], "mean": MEAN.tolist(),
          "std": STD.tolist(), "model": cfg.to_dict(), "class_names": list("abcd"),
          "num_classes": K}
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, {"params": params}, meta, wait=True)
  ckpt.close()
  for mode in ("predict", "embed"):
    loaded = engine.load_model(str(tmp_path), mode)
    x = np.zeros((1, T, SIZE, SIZE, C), np.float32)
    jaxpr = jax.make_jaxpr(loaded.apply)(loaded.params, x, np.ones((1, T, SIZE, SIZE), bool))
    assert "bf16" in str(jaxpr), mode
    assert jaxpr.out_avals[0].dtype == np.float32, mode
    assert all(p.dtype == np.float32 for p in _float_leaves(loaded.params)), mode
