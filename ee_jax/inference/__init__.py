"""Scene inference: whole scenes in, georeferenced rasters out (docs/design.md).

- `predict_scene(workdir, scene, out)`: class map GeoTIFF (+ optional probabilities) from a
  fine-tuned checkpoint.
- `embed_scene(workdir, scene, out, points=None)`: embedding GeoTIFF, PCA preview PNG and
  k-means map from any checkpoint's backbone; with `points`, a table of the embedding at
  those points (points.py).
Options: `default_config()` (embedded as `config.inference`), see `config.Options`.

Only the options are imported eagerly (configs import them); the engine (JAX, rasterio,
the scene reader) loads on first use of any other name.
"""

import importlib

from ee_jax.inference.config import Options, default_config

_LAZY = {
    "Summary": "engine", "embed_mode": "engine", "embed_scene": "engine",
    "load_model": "engine", "output_paths": "engine", "predict_mode": "engine",
    "predict_scene": "engine", "open_scene": "source", "RowBlender": "blending",
    "TileLayout": "blending", "tile_origins": "blending", "window2d": "blending",
}


def __getattr__(name):
  if name == "MODES":
    engine = importlib.import_module("ee_jax.inference.engine")
    return {"predict": engine.predict_mode, "embed": engine.embed_mode}
  if name in _LAZY:
    return getattr(importlib.import_module(f"ee_jax.inference.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'ee_jax.inference' has no attribute '{name}'")


__all__ = ["MODES", "Options", "default_config", *sorted(_LAZY)]
