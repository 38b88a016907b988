"""Labelled land-cover tiles: image raster(s) plus a label raster."""

from tfds_builders.landcover_tiles.builder import LandcoverTiles

__all__ = ["LandcoverTiles"]
