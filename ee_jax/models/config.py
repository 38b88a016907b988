"""Model config (ml-collections) -> modules. Experiment configs embed `default_config()`
as `config.model` and override fields; these are the only names the builders read."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ee_jax.errors import ConfigError
from ee_jax.models import backbones, input_beside
from ee_jax.models.conv import CONV_IMPLS
from ee_jax.models.heads import ProjectionHead, SegmentationHead
from ee_jax.models.wrappers import PretrainModel, SegmentationModel

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Model fields a fine-tuning run takes from its own config even when the architecture comes
# from a pre-training checkpoint: how it computes, and what its new head sees.
RUN_CHOICES = {"dtype": "float32", "conv_impl": "auto", "head_input": ""}


def take_run_choices(model_cfg, run_model_cfg) -> None:
  """Sets RUN_CHOICES in `model_cfg` (e.g. a checkpoint's architecture) from the run's own
  `run_model_cfg` (fields it lacks: their defaults)."""
  for key, default in RUN_CHOICES.items():
    model_cfg[key] = run_model_cfg.get(key, default)


def default_config() -> ml_collections.ConfigDict:
  """The default small model: widths (32, 64, 128, 256), D = 64 (see `count_params`)."""
  c = ml_collections.ConfigDict()
  c.widths = (32, 64, 128, 256)   # one entry per level; len - 1 downsamplings
  c.features = 64                 # D, per-pixel feature width of the backbone
  c.convs_per_block = 2
  c.num_groups = 8                # GroupNorm groups (gcd with the width when not dividing)
  c.norm_stats = "tile"           # GroupNorm statistics over the 'tile' or per 'pixel'
  # ee_jax/models/backbones.py: 'unet' | 'unet3d' (3x3x3 convs over T, H, W, pooled at
  # every skip; any T) | 'temporal_attention' (shared per-date encoder, L-TAE-style temporal
  # attention at the bottleneck whose weights also pool the skips; any T)
  c.backbone = "unet"
  # backbone 'unet': 'stack' (dates into channels, fixed T) | 'shared' (one 2D encoder per
  # date, pooled over time at every skip; any T)
  c.temporal = "stack"
  c.temporal_pool = "masked_mean" # 'masked_mean' | 'mean' | 'max' ('shared', 'unet3d')
  c.attn_heads = 4                # 'temporal_attention': heads (divide widths[-1])
  c.attn_key_dim = 16             # 'temporal_attention': key/query width per head
  c.resize_method = "bilinear"    # decoder upsampling (jax.image.resize method)
  # fine-tuning: what the segmentation head sees beside the features ('' | 'raw' |
  # 'raw3x3'; ee_jax/models/input_beside.py). A fine-tuning run's own choice, like dtype and
  # conv_impl (RUN_CHOICES): a pre-trained checkpoint's value is not used.
  c.head_input = ""
  c.proj_hidden = 0               # projection head hidden width; 0 -> D
  c.proj_dim = 128                # embedding width of the contrastive loss
  c.dtype = "float32"             # compute dtype: 'float32' | 'bfloat16' (params stay fp32)
  # how convolutions are computed, same maths (ee_jax/models/conv.py): 'auto' (matrix-product
  # forms on CPU, where XLA's convolution gradients are slow; XLA's own on GPU/TPU) | 'xla'
  # | 'matmul'
  c.conv_impl = "auto"
  return c


def _dtype(cfg):
  if cfg.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype: unknown '{cfg.dtype}'; known: {sorted(DTYPES)}")
  return DTYPES[cfg.dtype]


def _conv_impl(cfg):
  impl = cfg.get("conv_impl", "auto")
  if impl not in CONV_IMPLS:
    raise ConfigError(f"config.model.conv_impl: unknown '{impl}'; known: {CONV_IMPLS}")
  return impl


def build_backbone(cfg):
  """The backbone `cfg.backbone` names (ee_jax/models/backbones.py). Fields added later are
  read with their defaults, and `temporal='conv3d'` / `'attention'` name their backbones as
  they did, so the model config in an older checkpoint's metadata still builds."""
  if not cfg.widths:
    raise ConfigError("config.model.widths: needs at least one level")
  common = dict(widths=tuple(cfg.widths), features=cfg.features,
                convs_per_block=cfg.convs_per_block, num_groups=cfg.num_groups,
                norm_stats=cfg.get("norm_stats", "tile"), temporal_pool=cfg.temporal_pool,
                resize_method=cfg.resize_method, dtype=_dtype(cfg), conv_impl=_conv_impl(cfg))
  return backbones.build(cfg, **common)


def build_pretrain_model(cfg, loss_cfg=None) -> PretrainModel:
  """The backbone with the projection head and the heads the active objectives of
  `loss_cfg` (config.loss) add (ee_jax/objectives)."""
  from ee_jax import objectives  # objectives import models: import here, not at the top
  head = ProjectionHead(hidden=cfg.proj_hidden or None, out=cfg.proj_dim, dtype=_dtype(cfg),
                        conv_impl=_conv_impl(cfg))
  return PretrainModel(backbone=build_backbone(cfg), head=head,
                       heads=objectives.heads(loss_cfg))


def build_segmentation_model(cfg, num_classes: int) -> SegmentationModel:
  head = SegmentationHead(num_classes=num_classes, dtype=_dtype(cfg),
                          conv_impl=_conv_impl(cfg))
  return SegmentationModel(backbone=build_backbone(cfg), head=head,
                           head_input=input_beside.check(cfg.get("head_input", "")))


def init_params(model, key, input_shape, with_valid: bool = False):
  """Params for inputs of `input_shape` = (B, T, H, W, C). For temporal='stack' the T here
  fixes the model's number of dates; for the other modes any T works later.

  Compiled as one program: run op by op, initialising the default UNet compiled some 150
  small programs (12 s on 2 CPU cores), again in every study run once compiled programs
  are released between runs; one program is 6 s, and comes from the persistent
  compilation cache after that. The values are the same either way."""
  def init(key):
    x = jnp.zeros(input_shape, jnp.float32)
    valid = jnp.ones(input_shape[:4], jnp.float32) if with_valid else None
    return model.init(key, x, valid)["params"]

  return jax.jit(init)(key)


def count_params(params) -> int:
  """Number of scalar parameters in a param tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
