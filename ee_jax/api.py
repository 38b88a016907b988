"""A pre-trained backbone in your own code: `load_pretrained(path)` and `embed(array, ...)`.

Why here: using a checkpoint outside `launch.py` needs its model config, band list,
normalisation statistics and the nodata handling of scene inference together; getting one
of them wrong fails silently (wrong band order, unnormalised input). `Pretrained` carries
them from the checkpoint's metadata, and `preprocess` / `embed` run the same functions
scene inference runs (`geo.reader.digital_numbers`, `augment.model_input`,
`inference.engine.blend_scene`), so an array gives what `--mode=embed` gives for a file.
"""

import dataclasses
import os
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from ee_jax import augment, models
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo.reader import DEFAULT_NODATA, digital_numbers


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
  """A checkpoint's backbone: `backbone.apply({'params': params}, x, weight)` maps the
  `preprocess`ed input [B, T, H, W, C] and date weights [B, T, H, W] to per-pixel
  features [B, H, W, features]."""
  backbone: nn.Module
  params: Any
  bands: tuple[str, ...]      # the input's channels, in order
  mean: np.ndarray            # per band, of the digital numbers it was trained on
  std: np.ndarray
  num_dates: int | None       # dates the input must have (temporal='stack'); None: any
  features: int               # D
  meta: dict                  # the checkpoint's metadata as saved
  checkpoint: str
  step: int

  def __call__(self, x, weight):
    """The backbone's features of a preprocessed input (float32 [B, H, W, D])."""
    return self.backbone.apply({"params": self.params}, x, weight).astype(np.float32)

  def digital_numbers(self, array, valid=None, bands=None, nodata=DEFAULT_NODATA):
    """(uint16 [T, H, W, C] in the checkpoint's band order, observed bool [T, H, W]) of a
    user's array: what the scene reader gives for a file. See `preprocess`."""
    a = np.asarray(array)
    if a.ndim == 3:
      a = a[None]
    if a.ndim != 4:
      raise DataError(f"array: shape {np.shape(array)}; expected [T, H, W, C] (dates, rows, "
                      f"columns, bands) or [H, W, C] for one date")
    image, observed = digital_numbers(a[..., self._band_index(bands, a.shape[-1])], nodata,
                                      axis=-1)
    if valid is not None:
      v = np.asarray(valid)
      v = v[None] if v.ndim == 2 else v
      if v.shape != observed.shape:
        raise DataError(f"valid: shape {np.shape(valid)}, but the array's dates and pixels "
                        f"are {observed.shape}; pass a bool mask [T, H, W]")
      observed &= v.astype(bool)
    if self.num_dates and image.shape[0] != self.num_dates:
      raise DataError(f"array: {image.shape[0]} date(s), but the model in {self.checkpoint} "
                      f"stacks {self.num_dates} date(s) into its input (temporal='stack'); "
                      f"pass exactly {self.num_dates}")
    return image, observed

  def preprocess(self, array, valid=None, bands=None, nodata=DEFAULT_NODATA):
    """A user's digital numbers -> (x float32 [1, T, H, W, C], weight float32 [1, T, H, W]),
    the backbone's input, as scene inference builds it.

    array: [T, H, W, C] or [H, W, C] (one date), digital numbers as the training data held
    them (Sentinel-2: reflectance x 10000, processing-baseline offset removed). valid: bool
    [T, H, W] (or [H, W]), False where a date is cloudy or missing. A pixel is also
    unobserved where any band equals `nodata` (0, as in Sentinel-2 files; None: never) or
    is NaN. Unobserved pixels become the band mean (0 after normalising) with weight 0.
    bands: names of the array's channels, when they are not the checkpoint's `bands` in
    order; they are reordered (extra ones dropped), a missing one is a DataError.
    """
    image, observed = self.digital_numbers(array, valid, bands, nodata)
    return augment.model_input(image[None], observed[None], self.mean, self.std)

  def _band_index(self, bands: Sequence[str] | None, channels: int):
    want = list(self.bands)
    if bands is None:
      if channels != len(want):
        raise DataError(f"array: {channels} channels, but the model in {self.checkpoint} "
                        f"takes {len(want)} bands {want}; pass bands=[...] naming the "
                        f"array's channels to select and order them")
      return slice(None)
    bands = [str(b) for b in bands]
    if len(bands) != channels:
      raise DataError(f"bands: {len(bands)} names {bands} for an array of {channels} "
                      f"channels")
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:
      raise DataError(f"bands: {twice} named more than once in {bands}")
    missing = [b for b in want if b not in bands]
    if missing:
      raise DataError(f"bands: the array lacks {', '.join(missing)}, which the model in "
                      f"{self.checkpoint} takes (its bands: {want}; the array's: {bands})")
    return [bands.index(b) for b in want]


def load_pretrained(path) -> Pretrained:
  """The backbone of the latest checkpoint under `path` (a pre-training or fine-tuning
  workdir, its checkpoints/ folder or one step folder; local or any path orbax and
  etils.epath read, such as gs://)."""
  from ee_jax.inference import engine  # pylint: disable=import-outside-toplevel
  if not os.fspath(path or ""):
    raise ConfigError("load_pretrained: no path given; pass a pre-training workdir or "
                      "checkpoint folder")
  loaded = engine.load_model(os.fspath(path), "embed")
  meta = loaded.meta
  return Pretrained(
      backbone=loaded.module, params=loaded.params, bands=tuple(meta["bands"]),
      mean=np.asarray(meta["mean"], np.float32), std=np.asarray(meta["std"], np.float32),
      num_dates=int(meta.get("num_dates") or 1) if models.stacks_dates(meta["model"]) else None,
      features=loaded.channels, meta=meta, checkpoint=loaded.checkpoint, step=loaded.step)


def embed(array, model, valid=None, bands=None, nodata=DEFAULT_NODATA, tile_size: int = 0,
          overlap: float = 0.25, batch: int = 0) -> np.ndarray:
  """Per-pixel embeddings float32 [H, W, D] of an array in memory (NaN where no date is
  observed), tiled and blended as `--mode=embed` does a scene.

  model: a `Pretrained` (its params may be your own, e.g. after fine-tuning) or a path for
  `load_pretrained`. array, valid, bands, nodata: as `Pretrained.preprocess`. tile_size,
  overlap, batch: as config.inference's tile_size, overlap and per_device_batch (0: their
  defaults).
  """
  from ee_jax.inference import engine, source  # pylint: disable=import-outside-toplevel
  from ee_jax.inference.blending import TileLayout  # pylint: disable=import-outside-toplevel
  from ee_jax.inference.config import Options  # pylint: disable=import-outside-toplevel
  p = model if isinstance(model, Pretrained) else load_pretrained(model)
  image, observed = p.digital_numbers(array, valid, bands, nodata)
  opts = Options.resolve({"inference": dict(tile_size=tile_size, overlap=overlap,
                                            per_device_batch=batch, progress=False)}, p.meta)
  loaded = engine.backbone_model(p.backbone, p.params, p.meta, p.checkpoint, p.step)
  h, w = observed.shape[1:]
  layout = TileLayout(h, w, opts.tile_size, opts.overlap_px)
  runner = engine.TileRunner(loaded, layout.window, opts.per_device_batch)
  out = np.empty((h, w, p.features), np.float32)

  def sink(first, feats, ok):
    feats[~ok] = np.nan
    out[first:first + len(feats)] = feats

  engine.blend_scene(source.ArrayRows(image, observed), layout, runner, p.features,
                     opts.valid_reduce, sink)
  return out
