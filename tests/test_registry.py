"""The registries drive everything: every registered objective and backbone pre-trains and
fine-tunes from a tiny config and is named in the checkpoints' metadata; an objective
registered from outside the package gets its head, views and loss with no other change;
older checkpoints (backbones named by `temporal`, the train state with the latent
objective's teacher field) still build and restore."""

import importlib
import sys
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import finetune_synthetic, pretrain_synthetic
from ee_jax import augment, checkpoints, models, objectives
from ee_jax.errors import ConfigError
from ee_jax.runtime import parallel
from ee_jax.train import optim
from ee_jax.train.finetune import finetune
from ee_jax.train.pretrain import init_state, make_pretrain_step, pretrain
from ee_jax.train.state import TrainState

TINY = dict(num_tiles={"unlabelled": 16, "train": 16, "validation": 8, "test": 8},
            tile_size=16, scene_size=32, num_dates=2, num_bands=4)


def _pretrain_config(data_dir):
  """One pre-training step of a tiny model on the tiny labelled dataset."""
  c = pretrain_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny_registry"
  c.data.builder.update(TINY)
  c.data.per_device_batch = 2
  c.augment.crop_size = 12
  c.train.update(steps=1, eval_every=0, checkpoint_every=1, log_every=1)
  return c


def _finetune_config(data_dir, checkpoint):
  c = finetune_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny_registry"
  c.data.builder.update(TINY)
  c.data.per_device_batch = 2
  c.train.update(steps=1, eval_every=0, checkpoint_every=1)
  c.init.checkpoint = str(checkpoint)
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _pretrain_then_finetune(c, data_dir, tmp_path):
  """(pre-training metadata, its last metrics, fine-tuning metadata)."""
  last = pretrain(c, str(tmp_path / "pre"))
  _, meta = checkpoints.load_params(str(tmp_path / "pre"))
  finetune(_finetune_config(data_dir, tmp_path / "pre"), str(tmp_path / "ft"))
  _, ft_meta = checkpoints.load_params(str(tmp_path / "ft"))
  return meta, last, ft_meta


@pytest.mark.parametrize("name", objectives.names())
def test_every_objective_pretrains_and_finetunes(name, data_dir, tmp_path):
  c = _pretrain_config(data_dir)
  c.loss.weights.update({n: float(n == name) for n in objectives.names()})
  meta, last, ft_meta = _pretrain_then_finetune(c, data_dir, tmp_path)
  weights = meta["config"]["loss"]["weights"]
  assert weights[name] == 1.0 and sum(weights.values()) == 1.0
  assert np.isfinite(last["loss"])
  assert ft_meta["kind"] == "finetune" and ft_meta["init_checkpoint"] == str(tmp_path / "pre")


@pytest.mark.parametrize("name", sorted(models.BACKBONES))
def test_every_backbone_pretrains_and_finetunes(name, data_dir, tmp_path):
  c = _pretrain_config(data_dir)
  c.model.backbone = name
  c.model.attn_heads = 2          # divides the smoke model's bottleneck width
  meta, last, ft_meta = _pretrain_then_finetune(c, data_dir, tmp_path)
  assert meta["model"]["backbone"] == ft_meta["model"]["backbone"] == name
  assert models.backbone_name(meta["model"]) == name
  assert np.isfinite(last["loss"])


# -------------------------------------------------------------------- a toy objective
TOY_MODULE = '''
"""A toy objective from outside the package: a head of its own, an extra from the views,
pairs compared on its own head's output."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ee_jax.objectives.base import Head, Objective


def _head(x, out, *, dtype, conv_impl, width):
  del x, dtype, conv_impl
  return {"toy_map": nn.Dense(width, name="toy")(out["features"])}


class Toy(Objective):
  name, section, compares = "toy", "toy", "toy_map"

  def default_config(self):
    return ml_collections.ConfigDict({"width": 3})

  def head(self, loss_cfg):
    return Head(_head, (("width", int(loss_cfg.toy.width)),))

  def prepare_views(self, keys, v1, v2, loss_cfg):
    return v1, v2, {"toy_examples": keys.shape[0]}

  def loss(self, shared, loss_cfg, axis_name):
    a1, a2 = shared.pairs.take("toy_map")
    w = shared.pairs.amask.astype(jnp.float32)[..., None]
    loss = jnp.sum(jnp.square(a1 - a2) * w) / jnp.maximum(w.sum(), 1.0)
    return loss, {"toy": loss, "toy_examples": float(shared.extras["toy_examples"])}


OBJECTIVE = Toy()
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
  (tmp_path / "toy_objective.py").write_text(TOY_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  module = importlib.import_module("toy_objective")
  objectives.register(module.OBJECTIVE)
  yield module.OBJECTIVE
  objectives.unregister("toy")
  sys.modules.pop("toy_objective", None)


def test_a_registered_objective_gets_its_head_views_pairs_and_loss(toy):
  assert "toy" in objectives.names()
  lcfg = objectives.default_config()
  assert lcfg.weights.toy == 0.0 and lcfg.toy.width == 3        # its section, off by default
  lcfg.weights.update(infonce=0.0, toy=1.0)
  lcfg.num_anchors = 8
  mcfg = models.default_config()
  mcfg.update(widths=(8,), features=8, proj_dim=8, num_groups=4)
  model = models.build_pretrain_model(mcfg, lcfg)
  aug = augment.AugmentConfig(crop_size=8)
  tx, schedule = optax.sgd(0.1), optax.constant_schedule(0.1)   # no warmup: step 1 moves
  c = 2
  state = init_state(model, tx, jax.random.key(0, impl="rbg"), aug, (1, 8, 8, c))
  assert set(state.params) == {"backbone", "head", "toy"}
  assert state.params["toy"]["kernel"].shape == (8, 3)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.integers(500, 1500, (4, 1, 8, 8, c)).astype(np.uint16),
               valid=np.ones((4, 1, 8, 8), bool), index=np.arange(4))
  mean, std = np.full(c, 1000.0, np.float32), np.full(c, 300.0, np.float32)
  step = parallel.pmap_step(make_pretrain_step(model, tx, schedule, mean, std, aug, lcfg))
  new, m = step(parallel.replicate(state), parallel.shard(batch),
                parallel.replicate(jax.random.key(1)))
  m = parallel.unreplicate(m)
  assert set(m) >= {"loss", "toy", "toy_examples", "grad_norm", "lr"}
  assert "infonce" not in m and "masked" not in m
  assert m["toy_examples"] == 2.0                     # 4 examples over 2 devices
  np.testing.assert_allclose(m["loss"], m["toy"], rtol=1e-6)
  assert np.isfinite(m["loss"]) and m["grad_norm"] > 0
  toy_kernel = parallel.unreplicate(new.params)["toy"]["kernel"]
  assert not np.array_equal(toy_kernel, state.params["toy"]["kernel"])   # it learns


def test_unknown_objective_with_a_weight_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown objectives"):
    objectives.active(ml_collections.ConfigDict({"weights": {"latent": 1.0}}))


TOY_BACKBONE = '''
"""A toy backbone: one 1x1 convolution of the last date."""
import flax.linen as nn

NAME = "toy_backbone"


class Toy(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, valid=None):
    return nn.Dense(self.features, name="dense")(x[:, -1])


def from_config(cfg, **common):
  del common
  return Toy(int(cfg.features))
'''


def test_a_backbone_module_is_found_by_name(tmp_path, monkeypatch):
  """One file in the models package and its name in the config: nothing else to edit."""
  from ee_jax.models import backbones  # pylint: disable=import-outside-toplevel
  (tmp_path / "toy_backbone.py").write_text(TOY_BACKBONE)
  monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
  monkeypatch.setattr(backbones, "BACKBONES", backbones._discover())  # pylint: disable=protected-access
  try:
    assert set(backbones.BACKBONES) == {"unet", "unet3d", "temporal_attention", "toy_backbone"}
    cfg = models.default_config()
    cfg.update(backbone="toy_backbone", features=5)
    seg = models.build_segmentation_model(cfg, 3)
    params = models.init_params(seg, jax.random.key(0), (1, 2, 8, 8, 4))
    assert params["backbone"]["dense"]["kernel"].shape == (4, 5)
    assert seg.apply({"params": params}, jnp.ones((1, 2, 8, 8, 4))).shape == (1, 8, 8, 3)
  finally:
    sys.modules.pop("ee_jax.models.toy_backbone", None)


def test_unknown_backbone_is_a_config_error():
  cfg = models.default_config()
  cfg.backbone = "resnet"
  with pytest.raises(ConfigError, match="config.model.backbone: unknown 'resnet'"):
    models.build_backbone(cfg)


# ------------------------------------------------------ older checkpoints still work
@pytest.mark.parametrize("temporal,name", [("conv3d", "unet3d"),
                                           ("attention", "temporal_attention")])
def test_old_metadata_names_the_backbone_by_temporal(temporal, name):
  new = models.default_config()
  new.update(widths=(8, 16), features=8, backbone=name, attn_heads=2)
  old = new.to_dict()
  del old["backbone"]
  old["temporal"] = temporal
  assert models.backbone_name(old) == name and not models.stacks_dates(old)
  built_old = models.build_backbone(ml_collections.ConfigDict(old))
  built_new = models.build_backbone(new)
  assert type(built_old) is type(built_new)
  shapes = lambda m: jax.tree_util.tree_map(lambda s: s.shape, jax.eval_shape(  # noqa: E731
      lambda: models.init_params(m, jax.random.key(0), (1, 2, 16, 16, 3))))
  assert shapes(built_old) == shapes(built_new)
  with pytest.raises(ConfigError, match="backbone"):
    models.build_backbone(ml_collections.ConfigDict(dict(old, backbone="unet3d",
                                                         temporal="attention")))
  assert models.stacks_dates({"temporal": "stack"}) and not models.stacks_dates(
      {"backbone": "unet", "temporal": "shared"})


class _StateWithTeacher(flax.struct.PyTreeNode):
  """The train state as it was with the latent objective: a `teacher` field, None unless
  that objective was on. Orbax restores only into the saved tree: TrainState keeps the
  field (always None) so these checkpoints resume."""
  step: Any
  params: Any
  opt_state: Any
  teacher: Any = None


def test_checkpoint_of_the_state_with_a_teacher_field_restores(tmp_path):
  mcfg = models.default_config()
  mcfg.update(widths=(8,), features=8, proj_dim=8, num_groups=4)
  lcfg = objectives.default_config()
  lcfg.weights.masked = 1.0
  model = models.build_pretrain_model(mcfg, lcfg)
  tx, _ = optim.make_optimizer(optim.default_config(), 2)
  state = init_state(model, tx, jax.random.key(0, impl="rbg"), augment.AugmentConfig(),
                     (1, 8, 8, 2))
  state = state.replace(step=jnp.asarray(3, jnp.int32),
                        params=jax.tree_util.tree_map(lambda p: p + 1.0, state.params))
  old = _StateWithTeacher(state.step, state.params, state.opt_state)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(3, jax.device_get(old), {"kind": "pretrain"}, wait=True)
  fresh = init_state(model, tx, jax.random.key(1, impl="rbg"), augment.AugmentConfig(),
                     (1, 8, 8, 2))
  restored, meta = checkpoints.Checkpointer(str(tmp_path)).restore(fresh)
  assert isinstance(restored, TrainState) and meta["kind"] == "pretrain"
  assert int(restored.step) == 3
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params,
                         jax.device_get(state.params))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.opt_state,
                         jax.device_get(state.opt_state))
