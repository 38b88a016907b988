"""Models: UNet backbones (temporal modes stack, shared, conv3d, attention), projection and
segmentation heads, and the wrappers that put the backbone under the same param key for
pre-training and fine-tuning."""

from ee_jax.models.config import (build_backbone, build_pretrain_model,
                                  build_segmentation_model, count_params, default_config,
                                  init_params)
from ee_jax.models.heads import ProjectionHead, SegmentationHead
from ee_jax.models.temporal_attention import TemporalAttentionUNet, attention_weights
from ee_jax.models.unet import TEMPORAL_MODES, UNet, temporal_pool
from ee_jax.models.unet3d import UNet3D
from ee_jax.models.wrappers import BACKBONE, HEAD, PretrainModel, SegmentationModel

__all__ = [
    "BACKBONE", "HEAD", "PretrainModel", "ProjectionHead", "SegmentationHead",
    "SegmentationModel", "TEMPORAL_MODES", "TemporalAttentionUNet", "UNet", "UNet3D",
    "attention_weights", "build_backbone", "build_pretrain_model",
    "build_segmentation_model", "count_params", "default_config", "init_params",
    "temporal_pool",
]
