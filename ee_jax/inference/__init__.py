"""Scene inference: whole scenes in, georeferenced rasters out (DESIGN.md, data flow).

- `predict_scene(workdir, scene, out)`: class map GeoTIFF (+ optional probabilities) from a
  fine-tuned checkpoint.
- `embed_scene(workdir, scene, out)`: embedding GeoTIFF, PCA preview PNG and k-means map
  from any checkpoint's backbone.
Options: `default_config()` (embedded as `config.inference`), see `config.Options`.
"""

from ee_jax.inference.config import Options, default_config
from ee_jax.inference.engine import (Summary, embed_mode, embed_scene, load_model,
                                     output_paths, predict_mode, predict_scene)
from ee_jax.inference.source import open_scene
from ee_jax.inference.tiling import RowBlender, TileLayout, tile_origins, window2d

MODES = {"predict": predict_mode, "embed": embed_mode}

__all__ = [
    "MODES", "Options", "RowBlender", "Summary", "TileLayout", "default_config",
    "embed_mode", "embed_scene", "load_model", "open_scene", "output_paths", "predict_mode",
    "predict_scene", "tile_origins", "window2d",
]
