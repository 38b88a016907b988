"""Whole scenes in, georeferenced rasters out: `predict_scene` and `embed_scene`.

The pass over a scene (`blend_scene`):
  full-width row bands are read through the training reader (RowBuffer)
  -> tiles of `tile_size` at stride `tile_size - overlap` (TileLayout), batched
  -> pmapped forward: normalise with the checkpoint's statistics, nodata -> 0 (the band
     mean, as in training), model, multiply by the blending window
  -> weighted outputs accumulated per row segment (RowBlender)
  -> segments no later tile touches are divided by their summed weights and handed to the
     output sinks as soon as they are finished, so memory is bounded by a few tile rows.
The host reads and assembles batch i+1 while the devices run batch i.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ee_jax import augment, checkpoints, models
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError, DataError
from ee_jax.inference import cluster, points as pointlib, writers
from ee_jax.inference.config import Options
from ee_jax.inference.source import RowBuffer, open_scene
from ee_jax.inference.blending import RowBlender, TileLayout
from ee_jax.inference.writers import CLASS_NODATA, PngSink, RasterSink, class_colours

REQUIRED_META = ("bands", "mean", "std", "model")
# Default tiles per device and step. On CPU the activations are host memory, and batches of
# 2 are as fast as 8 (4096^2 scene, default model: peak RSS 1.57 GiB with 8, 1.20 with 4).
CPU_BATCH, ACCELERATOR_BATCH = 2, 8


# ----------------------------------------------------------------------------- the model
@dataclasses.dataclass
class LoadedModel:
  apply: Callable          # (params, x [b,T,h,w,C] float, date weights [b,T,h,w]) -> [b,h,w,K]
  params: object
  meta: dict
  channels: int            # K: classes (predict) or features D (embed)
  checkpoint: str
  step: int
  module: object = None    # the Flax module `apply` runs (segmentation model or backbone)


def load_model(workdir: str, mode: str) -> LoadedModel:
  """The checkpoint's model as a per-pixel function: class probabilities for 'predict', the
  backbone's features for 'embed' (any checkpoint: pre-trained or fine-tuned)."""
  if not workdir:
    raise ConfigError(f"--workdir is required for --mode={mode}: the run whose checkpoint "
                      f"to use")
  params, meta = checkpoints.load_params(workdir)
  missing = [k for k in REQUIRED_META if k not in meta]
  if missing:
    raise DataError(f"{workdir}: checkpoint metadata lacks {missing}; it was not written by "
                    f"this codebase's training")
  _, step = checkpoints.resolve_checkpoint(workdir)
  cfg = ml_collections.ConfigDict(meta["model"])
  if mode == "predict":
    if meta.get("kind") != "finetune":
      raise DataError(f"{workdir}: holds a '{meta.get('kind')}' checkpoint; --mode=predict "
                      f"needs a fine-tuned segmentation model (--mode=finetune); for a "
                      f"pre-trained one use --mode=embed")
    names = list(meta.get("class_names") or [])
    k = int(meta.get("num_classes") or len(names))
    if not 1 <= k <= 255:
      raise DataError(f"{workdir}: {k} classes do not fit a uint8 class map with nodata 255")
    model = models.build_segmentation_model(cfg, k)

    def apply(p, x, v):
      return jax.nn.softmax(model.apply({"params": p}, x, v).astype(jnp.float32), axis=-1)

    return LoadedModel(apply, params, meta, k, workdir, step, model)
  if mode == "embed":
    backbone = models.build_backbone(cfg)
    return backbone_model(backbone, params[models.BACKBONE], meta, workdir, step)
  raise ValueError(f"unknown inference mode '{mode}'")


def backbone_model(backbone, params, meta: dict, checkpoint: str, step: int) -> LoadedModel:
  """A backbone and its params as the per-pixel feature function of `--mode=embed` (also
  `ee_jax.api.embed`, with params a user may have fine-tuned)."""
  def apply(p, x, v):
    return backbone.apply({"params": p}, x, v).astype(jnp.float32)

  return LoadedModel(apply, params, meta, int(meta["model"]["features"]), checkpoint, step,
                     backbone)


class TileRunner:
  """The pmapped forward over a batch of tiles: uint16 [B, T, h, w, C] -> weighted [B, h, w, K]."""

  def __init__(self, loaded: LoadedModel, window: np.ndarray, per_device_batch: int = 0):
    self.devices = parallel.local_device_count()
    if not per_device_batch:
      per_device_batch = CPU_BATCH if jax.default_backend() == "cpu" else ACCELERATOR_BATCH
    # A CPU split into one device per core shares one device's tiles (at least one each).
    self.batch = max(1, per_device_batch // parallel.batch_split()) * self.devices
    mean = np.asarray(loaded.meta["mean"], np.float32)
    std = np.asarray(loaded.meta["std"], np.float32)
    win = jnp.asarray(window)

    def step(params, image, valid):
      x, weight = augment.model_input(image, valid, mean, std)  # nodata -> the band mean
      out = loaded.apply(params, x, weight)
      return out * win[None, :, :, None]

    self._step = parallel.pmap_step(step)
    self._params = parallel.replicate(loaded.params)

  def dispatch(self, image: np.ndarray, valid: np.ndarray):
    """Starts the forward (asynchronous); `fetch` its result."""
    return self._step(self._params, *parallel.shard((image, valid), self.devices))

  @staticmethod
  def fetch(pending) -> np.ndarray:
    return parallel.unshard(pending)


# -------------------------------------------------------------------------- progress
class Progress:
  """Progress over row blocks: a tqdm bar on terminals; in logs (stdout not a tty) a plain
  line at 25, 50, 75 and 100 % of the rows, so log files hold no carriage returns."""

  def __init__(self, label: str, total: int, pixels_per_row: int, enabled: bool = True,
               stream=None):
    self.label, self.total, self.ppr = label, max(total, 1), pixels_per_row
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self.tty = self.stream.isatty()
    self.start = time.time()
    self.rows = 0
    self._last_quarter = 0
    self._bar = None
    if enabled and self.tty:
      self._bar = tqdm.tqdm(total=self.total, desc=label, unit="row", file=self.stream,
                            dynamic_ncols=True)

  def update(self, rows_done: int):
    self.rows = rows_done
    if not self.enabled:
      return
    rate = rows_done * self.ppr / max(time.time() - self.start, 1e-9) / 1e6
    if self._bar is not None:
      self._bar.set_postfix_str(f"{rate:.2f} Mpx/s", refresh=False)
      self._bar.update(rows_done - self._bar.n)
      if rows_done >= self.total:
        self._bar.close()
      return
    quarter = 4 * min(rows_done, self.total) // self.total
    if quarter > self._last_quarter:
      self._last_quarter = quarter
      print(f"{self.label}: {rows_done}/{self.total} rows ({25 * quarter}%), {rate:.2f} Mpx/s",
            file=self.stream, flush=True)


# ------------------------------------------------------------------------ the blended pass
def blend_scene(buffer: RowBuffer, layout: TileLayout, runner: TileRunner, channels: int,
                reduce: str, sink: Callable, progress: Progress | None = None) -> int:
  """One pass over the scene; `sink(first_row, blended [n, W, K], valid [n, W])` receives
  every row segment once, in order. Returns the number of tiles run."""
  blender = RowBlender(layout.segment_rows, layout.height, layout.width, channels)
  th, tw = layout.tile_h, layout.tile_w
  t, c = buffer.image.shape[0], buffer.image.shape[-1]
  b = runner.batch
  batches = [layout.origins[i:i + b] for i in range(0, len(layout.origins), b)]
  def prepare(batch):
    rows = [layout.rows_of(r) for r, _ in batch]
    first, new_valid = buffer.ensure(min(x.min() for x in rows), max(x.max() for x in rows) + 1)
    blender.put_valid(first, new_valid.any(axis=0) if reduce == "any" else new_valid.all(axis=0))
    image = np.zeros((b, t, th, tw, c), np.uint16)
    valid = np.zeros((b, t, th, tw), bool)
    for j, (r, col) in enumerate(batch):
      image[j], valid[j] = buffer.gather(rows[j], layout.cols_of(col))
    return runner.dispatch(image, valid)

  pending = prepare(batches[0])
  for k, batch in enumerate(batches):
    following = prepare(batches[k + 1]) if k + 1 < len(batches) else None
    out = runner.fetch(pending)
    for j, (r, col) in enumerate(batch):
      r0, c0, rs, cs = layout.crop(r, col)
      blender.add(r0, c0, out[j, rs, cs], layout.window[rs, cs])
    upto = layout.first_scene_row(batches[k + 1][0][0]) if following is not None \
        else layout.height
    for first, rows, valid in blender.pop(upto):
      sink(first, rows, valid)
      if progress:
        progress.update(first + len(rows))
    pending = following
  return len(layout.origins)


# ------------------------------------------------------------------------------ outputs
def _stem(out: str) -> str:
  root, ext = os.path.splitext(out)
  return root if ext.lower() in (".tif", ".tiff") else out


def output_paths(out: str, mode: str, opts: Options, points: bool = False) -> dict[str, str]:
  """Where each output of a mode goes, given --out (and for embed, whether --points)."""
  if not out:
    raise ConfigError(f"--out is required for --mode={mode} (the output GeoTIFF path)")
  if "://" in out or out.startswith("/vsi"):
    raise ConfigError(f"--out={out}: outputs are written locally (staged, then renamed into "
                      f"place, never half-written); give a local path and copy it afterwards")
  out = os.path.abspath(os.path.expanduser(out))
  stem = _stem(out)
  if mode == "predict":
    paths = {"class_map": out}
    if opts.probabilities:
      paths["probabilities"] = stem + "_prob.tif"
  else:
    paths = {"embedding": out, "pca_preview": stem + "_pca.png",
             "kmeans": stem + "_kmeans.tif"}
    if points:
      paths["points"] = f"{stem}_points.{opts.points_format}"
  return paths


def _common_tags(loaded: LoadedModel, scene, mode: str) -> dict:
  return {"EE_MODE": mode, "EE_CHECKPOINT": (
              loaded.checkpoint if "://" in os.fspath(loaded.checkpoint)
              else os.path.abspath(loaded.checkpoint)),
          "EE_CHECKPOINT_STEP": loaded.step,
          "EE_CODE_VERSION": checkpoints.code_version(),
          "EE_SCENE": ",".join(a.product_id for a in scene.acquisitions),
          "EE_BANDS": ",".join(loaded.meta["bands"])}


@dataclasses.dataclass
class Summary:
  mode: str
  width: int
  height: int
  valid_pixels: int
  tiles: int
  seconds: float
  outputs: dict
  phases: dict = dataclasses.field(default_factory=dict)  # seconds per phase

  @property
  def pixels(self) -> int:
    return self.width * self.height

  @property
  def mpx_per_s(self) -> float:
    return self.pixels / max(self.seconds, 1e-9) / 1e6

  def text(self) -> str:
    lines = [f"{self.mode}: {self.width}x{self.height} px ({self.pixels / 1e6:.2f} Mpx, "
             f"{100 * self.valid_pixels / max(self.pixels, 1):.1f}% valid), {self.tiles} tiles, "
             f"{self.seconds:.1f} s, {self.mpx_per_s:.3f} Mpx/s"]
    if self.phases:
      lines[0] += " (" + ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items()) + ")"
    width = max(len(k) for k in self.outputs)
    lines += [f"  {k:<{width}}  {v}" for k, v in self.outputs.items()]
    return "\n".join(lines)


class _Outputs(contextlib.AbstractContextManager):
  """The sinks of one run: committed together by `commit()`, or all aborted (temporary
  files removed) when the block raises.

  Inside the block (the whole run, main thread only) SIGTERM first removes every temporary
  file (`writers.remove_temporaries`) and says so in one line, then raises SystemExit. The
  removal cannot wait for the exception: a signal that arrives during GDAL's COG copy is
  handled inside a rasterio callback, where the exception ends the interpreter at once
  instead of unwinding to `__exit__`. A signal during `commit()` (renames only) is held
  until the outputs are complete. The previous handler is restored after.
  """

  def __init__(self, mode: str, out: str):
    self.mode, self.out = mode, out
    self.sinks = []
    self._previous = None
    self._committing = False
    self._held = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._stop)
    return self

  def __exit__(self, exc_type, exc, tb):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if exc_type is not None:
      for s in self.sinks:
        s.abort()
    return False

  def _stop(self, signum, frame):
    del frame
    if self._committing:
      self._held = signum
      return
    writers.remove_temporaries()
    print(f"{self.mode}: stopped by {signal.Signals(signum).name}; nothing was written "
          f"(no {self.out}; temporary files removed)", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)

  def add(self, sink):
    self.sinks.append(sink)
    return sink

  def commit(self):
    self._committing = True
    try:
      for s in self.sinks:
        s.commit()
    finally:
      self._committing = False
    if self._held is not None:
      print(f"{self.mode}: stopped by {signal.Signals(self._held).name} after every output "
            f"was written", file=sys.stderr, flush=True)
      raise SystemExit(128 + self._held)


def _prepare(mode, workdir, scene, out, config, options, points=None):
  if jax.process_count() > 1:
    raise ConfigError(f"--mode={mode} runs in one process (its local devices); run it "
                      f"without jax.distributed")
  loaded = load_model(workdir, mode)
  opts = Options.resolve(config, loaded.meta)
  if options:
    opts = dataclasses.replace(opts, **options)
    opts.validate()
  paths = output_paths(out, mode, opts, points=bool(points))
  scn = open_scene(scene, loaded.meta, opts, checkpoint=workdir)
  if points:   # checked before the pass: a bad point costs no minutes of inference
    points = pointlib.Points(os.path.expanduser(os.fspath(points)), scn.grid, scn.scene_id,
                             loaded.channels)
  for p in paths.values():
    os.makedirs(os.path.dirname(p), exist_ok=True)
  g = scn.grid
  layout = TileLayout(g.height, g.width, opts.tile_size, opts.overlap_px)
  runner = TileRunner(loaded, layout.window, opts.per_device_batch)
  if opts.progress:
    print(f"{mode}: scene {scn.scene_id} ({g.width}x{g.height} px, "
          f"{len(scn.acquisitions)} date(s), {len(loaded.meta['bands'])} bands, "
          f"{g.crs.to_string() if g.crs else 'no CRS'}) with {workdir} step {loaded.step}; "
          f"{len(layout)} tiles of {layout.tile_h}x{layout.tile_w} px, overlap "
          f"{layout.overlap} px, batches of {runner.batch} on {runner.devices} device(s)",
          flush=True)
  return loaded, opts, paths, scn, layout, runner, points


def _tile_pass(mode, loaded, scn, layout, runner, channels, opts, sink) -> int:
  """Reads the scene in row bands and blends the model's tiles into `sink`; -> tiles run."""
  progress = Progress(mode, layout.height, layout.width, opts.progress)
  with RowBuffer(scn, loaded.meta["bands"], _resampling(loaded.meta),
                 opts.gdal_cache_mb) as buffer:
    return blend_scene(buffer, layout, runner, channels, opts.valid_reduce, sink, progress)


def _summarise(mode, layout, valid_count, tiles, start, paths, phases, opts) -> Summary:
  summary = Summary(mode, layout.width, layout.height, valid_count, tiles,
                    time.time() - start, paths, phases)
  if opts.progress:
    print(summary.text(), flush=True)
  return summary


def predict_scene(workdir: str, scene, out: str, config=None, **options) -> Summary:
  """Class map (uint8, nodata 255, class names, colour table) of `scene` on its own grid;
  with `probabilities`, also <out stem>_prob.tif (float16, one band a class).

  scene: a product folder, a multi-band GeoTIFF, a comma-separated string or list of them
  (a time series), or product mappings as in the s2_tiles builder. options: fields of
  `Options`, overriding config.inference.
  """
  start = time.time()
  with _Outputs("predict", out) as outputs:
    loaded, opts, paths, scn, layout, runner, _ = _prepare("predict", workdir, scene, out,
                                                           config, options)
    k = loaded.channels
    names = [str(n) for n in (loaded.meta.get("class_names")
                              or [f"class_{i}" for i in range(k)])]
    tags = {**_common_tags(loaded, scn, "predict"), "EE_CLASS_NAMES": _json(names),
            "EE_IGNORE_INDEX": loaded.meta.get("ignore_index", 255),
            "EE_NODATA": CLASS_NODATA}
    valid_count = 0
    cls_sink = outputs.add(RasterSink(
        paths["class_map"], scn.grid, 1, "uint8", CLASS_NODATA, descriptions=["class"],
        tags={**tags, **{f"CLASS_{i}": n for i, n in enumerate(names)}},
        colormap=class_colours(k), overview_resampling="mode"))
    prob_sink = None
    if opts.probabilities:
      prob_sink = outputs.add(RasterSink(
          paths["probabilities"], scn.grid, k, "float32", float("nan"), half=True,
          descriptions=names, tags=tags, overview_resampling="average"))

    def sink(first, probs, valid):
      nonlocal valid_count
      classes = probs.argmax(axis=-1).astype(np.uint8)
      classes[~valid] = CLASS_NODATA
      cls_sink.write(first, classes)
      valid_count += int(valid.sum())
      if prob_sink is not None:
        probs[~valid] = np.nan
        prob_sink.write(first, probs)

    phases = {"setup": time.time() - start}
    t0 = time.time()
    tiles = _tile_pass("predict", loaded, scn, layout, runner, k, opts, sink)
    phases["tiles"] = time.time() - t0
    t0 = time.time()
    for s in outputs.sinks:
      s.finish()
    outputs.commit()
    phases["cog"] = time.time() - t0
  return _summarise("predict", layout, valid_count, tiles, start, paths, phases, opts)


def embed_scene(workdir: str, scene, out: str, config=None, points: str | None = None,
                **options) -> Summary:
  """Per-pixel backbone features of `scene` (D bands, float16, NaN where invalid), a 3-band
  PCA preview PNG and a k-means class map (uint8, nodata 255) on the scene's grid; with
  `points` (a CSV, ee_jax/inference/points.py) also the features at those points as a
  table, <out stem>_points.csv (or .parquet)."""
  start = time.time()
  with _Outputs("embed", out) as outputs:
    loaded, opts, paths, scn, layout, runner, pts = _prepare("embed", workdir, scene, out,
                                                             config, options, points)
    d = loaded.channels
    tags = _common_tags(loaded, scn, "embed")
    g = scn.grid
    rng = np.random.default_rng(opts.seed)
    keep_p = min(1.0, 2.0 * opts.fit_samples / max(g.width * g.height, 1))
    samples = []
    valid_count = 0
    emb_sink = outputs.add(RasterSink(
        paths["embedding"], g, d, "float32", float("nan"), half=True,
        descriptions=[f"feature_{i}" for i in range(d)], tags=tags,
        overview_resampling="average"))

    def sink(first, feats, valid):
      nonlocal valid_count
      feats[~valid] = np.nan
      emb_sink.write(first, feats)
      if pts is not None:
        pts.take(first, feats)
      valid_count += int(valid.sum())
      idx = np.flatnonzero(valid.ravel())
      idx = idx[rng.random(len(idx)) < keep_p]
      # As stored (float16), so the fit sees exactly what the second pass reads back.
      samples.append(feats.reshape(-1, d)[idx].astype(np.float16).astype(np.float32))

    phases = {"setup": time.time() - start}
    t0 = time.time()
    tiles = _tile_pass("embed", loaded, scn, layout, runner, d, opts, sink)
    emb_sink.close_stripes()
    phases["tiles"] = time.time() - t0
    t0 = time.time()

    sample = np.concatenate(samples) if samples else np.zeros((0, d), np.float32)
    if len(sample) < opts.kmeans_k:
      raise DataError(f"{scn.scene_id}: only {len(sample)} valid pixels; k-means with "
                      f"k={opts.kmeans_k} needs at least that many")
    if len(sample) > opts.fit_samples:
      sample = sample[np.sort(rng.choice(len(sample), opts.fit_samples, replace=False))]
    pca = cluster.fit_pca(sample)
    centroids = cluster.kmeans(sample, opts.kmeans_k, opts.kmeans_iters, opts.seed)
    del sample
    samples.clear()
    phases["fit"] = time.time() - t0
    t0 = time.time()

    km_sink = outputs.add(RasterSink(
        paths["kmeans"], g, 1, "uint8", CLASS_NODATA, descriptions=["cluster"],
        tags={**tags, "EE_KMEANS_K": opts.kmeans_k, "EE_KMEANS_SAMPLES": opts.fit_samples},
        colormap=class_colours(opts.kmeans_k), overview_resampling="mode"))
    png = outputs.add(PngSink(paths["pca_preview"]))
    if pts is not None:
      outputs.add(pointlib.TableSink(paths["points"], pts, opts.points_format)).finish()
    rgb = _second_pass(emb_sink.stripes, g, d, pca, centroids, km_sink, opts.preview_size,
                       opts.progress, opts.gdal_cache_mb)
    png.finish(rgb)
    phases["kmeans_pca"] = time.time() - t0
    t0 = time.time()
    for s in outputs.sinks:
      if isinstance(s, RasterSink):
        s.finish()
    outputs.commit()
    phases["cog"] = time.time() - t0
  return _summarise("embed", layout, valid_count, tiles, start, paths, phases, opts)


def preview_shape(h: int, w: int, preview_size: int) -> tuple[int, int]:
  """(rows, cols) of the preview: longest side exactly `preview_size` when the scene is
  larger (the other side in proportion, rounded), else the scene's own size."""
  if not preview_size or max(h, w) <= preview_size:
    return h, w
  scale = preview_size / max(h, w)
  return max(1, round(h * scale)), max(1, round(w * scale))


class Preview:
  """Box-filtered downsampling of an RGB image that arrives in row bands: preview pixel
  (i, j) is the mean of the valid scene pixels whose row maps to i (r * ph // h) and column
  to j. Bins are 1 or 2 (generally floor/ceil of h / ph) pixels wide: an integer block
  factor could not make the longest side exactly `preview_size` (1947 rows / 1024 needs
  1.9)."""

  def __init__(self, h: int, w: int, preview_size: int):
    self.h, self.w = h, w
    self.ph, self.pw = preview_shape(h, w, preview_size)
    col_bins = np.arange(w) * self.pw // w
    self._col_starts = np.flatnonzero(np.diff(col_bins, prepend=-1))
    self._sum = np.zeros((self.ph, self.pw, 3), np.float64)
    self._count = np.zeros((self.ph, self.pw), np.float64)

  def add(self, first_row: int, colour: np.ndarray, valid: np.ndarray) -> None:
    """colour [n, W, 3] in [0, 1], valid [n, W] for scene rows first_row .. first_row+n-1."""
    colour = np.where(valid[..., None], colour, 0.0)
    rows = (first_row + np.arange(len(colour))) * self.ph // self.h
    starts = np.flatnonzero(np.diff(rows, prepend=-1))
    bins = rows[starts]
    for values, total in ((colour, self._sum), (valid.astype(np.float64), self._count)):
      binned = np.add.reduceat(np.add.reduceat(values, starts, axis=0), self._col_starts,
                               axis=1)
      total[bins] += binned

  def rgb(self) -> np.ndarray:
    """uint8 [ph, pw, 3]; black where a bin holds no valid pixel."""
    mean = self._sum / np.maximum(self._count, 1)[..., None]
    return np.round(255 * mean).astype(np.uint8)


def _second_pass(embedding_path, grid, d, pca, centroids, km_sink, preview_size, show,
                 gdal_cache_mb):
  """Reads the written embedding back in row bands: k-means labels into `km_sink`, and the
  PCA preview (the stretched components, box-filtered to `preview_shape`) as uint8 RGB."""
  import rasterio  # pylint: disable=import-outside-toplevel
  from rasterio.windows import Window  # pylint: disable=import-outside-toplevel
  from ee_jax.geo.reader import GDAL_ENV  # pylint: disable=import-outside-toplevel

  h, w = grid.height, grid.width
  preview = Preview(h, w, preview_size)
  rows = max(1, 48 * 2**20 // max(w * d * 4, 1))
  progress = Progress("k-means/PCA", h, w, show)
  env = {**GDAL_ENV, "GDAL_CACHEMAX": gdal_cache_mb * 2**20}
  with rasterio.Env(**env), rasterio.open(embedding_path) as ds:
    for r0 in range(0, h, rows):
      n = min(rows, h - r0)
      x = np.moveaxis(ds.read(window=Window(0, r0, w, n)), 0, -1)   # [n, W, D]
      valid = ~np.isnan(x).any(axis=-1)
      labels = np.full((n, w), CLASS_NODATA, np.uint8)
      labels[valid] = cluster.assign(x[valid], centroids).astype(np.uint8)
      km_sink.write(r0, labels)
      colour = np.zeros((n, w, 3), np.float32)
      colour[valid] = pca.rgb(x[valid])
      preview.add(r0, colour, valid)
      progress.update(r0 + n)
  return preview.rgb()


def _resampling(meta: dict) -> str:
  return meta.get("resampling") or "bilinear"


def _json(value) -> str:
  import json  # pylint: disable=import-outside-toplevel
  return json.dumps(value)


# --------------------------------------------------------------------- launch.py modes
def _options(kwargs: dict) -> tuple[str, str]:
  scene, out = kwargs.get("scene"), kwargs.get("out")
  if not scene:
    raise ConfigError("--scene is required: a product folder or multi-band GeoTIFF (a "
                      "comma-separated list of them for a time series)")
  return scene, out


def predict_mode(config, workdir, **kwargs) -> Summary:
  """`--mode=predict --workdir=<fine-tune run> --scene=PATH --out=map.tif`."""
  scene, out = _options(kwargs)
  return predict_scene(workdir, scene, out, config)


def embed_mode(config, workdir, **kwargs) -> Summary:
  """`--mode=embed --workdir=<pre-training run> --scene=PATH --out=emb.tif
  [--points=points.csv]`."""
  scene, out = _options(kwargs)
  return embed_scene(workdir, scene, out, config, points=kwargs.get("points"))
