"""Models: backbones by name (unet with temporal 'stack' | 'shared', unet3d,
temporal_attention; backbones.py), projection and segmentation heads, and the wrappers that
put the backbone under the same param key for pre-training and fine-tuning."""

from ee_jax.models.backbones import BACKBONES, backbone_name, stacks_dates
from ee_jax.models.config import (RUN_CHOICES, build_backbone, build_pretrain_model,
                                  build_segmentation_model, count_params, default_config,
                                  init_params, take_run_choices)
from ee_jax.models.heads import ProjectionHead, SegmentationHead
from ee_jax.models.temporal_attention import TemporalAttentionUNet, attention_weights
from ee_jax.models.unet import TEMPORAL_MODES, UNet, temporal_pool
from ee_jax.models.unet3d import UNet3D
from ee_jax.models.wrappers import BACKBONE, HEAD, PretrainModel, SegmentationModel

__all__ = [
    "BACKBONE", "BACKBONES", "HEAD", "PretrainModel", "ProjectionHead", "RUN_CHOICES",
    "SegmentationHead", "SegmentationModel", "TEMPORAL_MODES", "TemporalAttentionUNet", "UNet",
    "UNet3D", "attention_weights", "backbone_name", "build_backbone", "build_pretrain_model",
    "build_segmentation_model", "count_params", "default_config", "init_params",
    "stacks_dates", "take_run_choices", "temporal_pool",
]
