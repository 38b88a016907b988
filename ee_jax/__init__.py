"""Embedding Earth in JAX: dense contrastive pre-training on satellite imagery."""

__version__ = "0.1.0"
