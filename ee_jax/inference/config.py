"""Inference options: `default_config()` is embedded as `config.inference`; every field can be
overridden on the command line (`--config.inference.overlap=0.5`).

`Options.resolve(config, meta)` merges those overrides with the defaults and fills what
comes from the checkpoint (tile size, offsets, nodata), so the rest of the package never
looks at the raw config.
"""

import dataclasses
from typing import Tuple

import ml_collections

from ee_jax.errors import ConfigError

DEFAULT_TILE = 256


@dataclasses.dataclass(frozen=True)
class Options:
  """What scene inference needs beyond the checkpoint's own metadata."""
  tile_size: int = 0          # square tile fed to the model; 0 -> max(256, training tile size)
  overlap: float = 0.25       # share of tile_size each tile shares with its neighbour, [0, 1)
  per_device_batch: int = 0   # tiles per device per forward step; 0 -> 2 on CPU (activations
                              # are host memory: ~85 MB a 256 px tile with the default
                              # model), 8 on GPU/TPU
  probabilities: bool = False  # predict: also write <out stem>_prob.tif (float16, 1 band/class)
  kmeans_k: int = 8           # embed: clusters of the k-means map
  kmeans_iters: int = 50      # embed: Lloyd iterations (stops earlier when converged)
  fit_samples: int = 65536    # embed: valid pixels sampled (seeded) to fit PCA and k-means
  preview_size: int = 1024    # embed: longest side of the PCA preview PNG; 0 = full size
  valid_reduce: str = "any"   # an output pixel is valid if observed on 'any' / 'all' dates
  remove_offset: str = ""     # '' -> as the model's training data ('auto' unless set there)
  nodata: str = ""            # '' -> as the model's training data ('auto' unless set there)
  band_order: Tuple[str, ...] = ()  # band names of multi-band GeoTIFFs without descriptions
                                    # (command line: --config.inference.band_order=B02,B03)
  check_gsd: bool = True      # refuse a scene whose pixel size differs from the model's
  gdal_cache_mb: int = 64     # GDAL block cache while reading and writing row bands (MiB)
  seed: int = 0               # embed: pixel sampling and k-means initialisation
  points_format: str = "csv"  # embed --points: the table's format, 'csv' or 'parquet'
  progress: bool = True       # progress over blocks (a bar on terminals) and a summary

  @classmethod
  def resolve(cls, config=None, meta: dict | None = None) -> "Options":
    """Defaults, then `config.inference` overrides (if the config has that section), then
    the checkpoint's values for the fields left at their 'from the checkpoint' default."""
    d = dataclasses.asdict(cls())
    section = config.get("inference") if config is not None and hasattr(config, "get") else None
    if section is not None:
      over = section.to_dict() if hasattr(section, "to_dict") else dict(section)
      unknown = sorted(set(over) - set(d))
      if unknown:
        raise ConfigError(f"config.inference: unknown keys {unknown}; known: {sorted(d)}")
      d.update(over)
    # 'B04,B03,B02' from the command line arrives as one string (or a 1-tuple of it).
    order = d["band_order"] or ()
    order = [order] if isinstance(order, str) else order
    d["band_order"] = tuple(b.strip() for o in order for b in str(o).split(",") if b.strip())
    d["remove_offset"] = "" if d["remove_offset"] is None else str(d["remove_offset"])
    d["nodata"] = "" if d["nodata"] is None else str(d["nodata"])
    meta = meta or {}
    builder = ((meta.get("config") or {}).get("data") or {}).get("builder") or {}
    if not d["tile_size"]:
      # Not the training tile size itself: tiles of 64 px show seams in embeddings even at
      # 50% overlap (zero-padding effects reach far into small tiles); 256 px tiles with
      # 25% overlap show no sharp seams and cost fewer pixels per output pixel. With
      # GroupNorm statistics over the tile (model.norm_stats='tile'), low-contrast areas
      # can still show tile-sized level shifts: more overlap, or a 'pixel' model, removes
      # them (docs/reference.md, scene inference).
      d["tile_size"] = max(DEFAULT_TILE, int(meta.get("tile_size") or 0))
    if d["remove_offset"] == "":
      d["remove_offset"] = str(builder.get("remove_offset", "auto"))
    if d["nodata"] == "":
      d["nodata"] = str(builder.get("nodata", "auto"))
    out = cls(**d)
    out.validate()
    return out

  def validate(self) -> None:
    where = "config.inference"
    if self.tile_size < 8:
      raise ConfigError(f"{where}.tile_size must be >= 8, got {self.tile_size}")
    if not 0.0 <= self.overlap < 1.0:
      raise ConfigError(f"{where}.overlap is a share of tile_size in [0, 1), got {self.overlap}")
    if self.per_device_batch < 0:
      raise ConfigError(f"{where}.per_device_batch must be >= 1 (0: automatic)")
    if not 2 <= self.kmeans_k <= 254:
      raise ConfigError(f"{where}.kmeans_k must be in [2, 254], got {self.kmeans_k}")
    if self.fit_samples < self.kmeans_k:
      raise ConfigError(f"{where}.fit_samples must be >= kmeans_k")
    if self.preview_size < 0:
      raise ConfigError(f"{where}.preview_size must be >= 0 (0 = full size)")
    if self.gdal_cache_mb < 1:
      raise ConfigError(f"{where}.gdal_cache_mb must be >= 1")
    if self.points_format not in ("csv", "parquet"):
      raise ConfigError(f"{where}.points_format must be 'csv' or 'parquet', got "
                        f"'{self.points_format}'")
    if self.valid_reduce not in ("any", "all"):
      raise ConfigError(f"{where}.valid_reduce must be 'any' or 'all', got '{self.valid_reduce}'")

  @property
  def overlap_px(self) -> int:
    return int(round(self.overlap * self.tile_size))


def default_config() -> ml_collections.ConfigDict:
  """`Options`' defaults as a ConfigDict, to embed as `config.inference`."""
  d = dataclasses.asdict(Options())
  return ml_collections.ConfigDict(d)
