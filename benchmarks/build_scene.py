"""Builds a synthetic full-size Sentinel-2 product with `s2_tiles`; prints time and peak RSS.

The product is 10980 x 10980 pixels at 10 m (one MGRS tile), 13 band files at their
native resolutions, deflate-compressed tiled GeoTIFFs, like a real L1C granule. The build
runs in a child process so its peak RSS is measured alone (target: under 2 GiB).

With `--beam` the build is a Beam pipeline on DirectRunner with `--workers` worker
processes (tfds_builders/beam_tiles.py); the child then reports the peak RSS (VmHWM) of
every process it starts: the runner itself, which on DirectRunner also holds the shuffle
(every serialized tile until the shards are written; on Dataflow the service does), and
each worker, which reads one product at a time and writes one shard at a time.

  python benchmarks/build_scene.py [--size 10980] [--workdir /tmp/x] [--keep]
                                   [--beam [--workers 2]]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ee_jax.geo.bands import S2_L1C_BANDS, S2_NATIVE_GSD  # noqa: E402

PRODUCT = "S2A_MSIL1C_20230615T100031_N0509_R122_T33UXP_20230615T120000"


def write_band(path: str, band_index: int, size_10m: int, gsd: int) -> None:
  """A smooth field pattern plus noise, written in row strips (bounded memory)."""
  n = -(-size_10m * 10 // gsd)
  rng = np.random.default_rng(band_index)
  phase = rng.uniform(0, 2 * np.pi, 4)
  profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint16",
                 crs="EPSG:32633", transform=from_origin(600000, 5400000, gsd, gsd),
                 compress="deflate", predictor=2, tiled=True, blockxsize=512, blockysize=512)
  x = np.arange(n) * gsd
  with rasterio.open(path, "w", **profile) as ds:
    for r0 in range(0, n, 1024):
      rows = np.arange(r0, min(n, r0 + 1024))[:, None] * gsd
      field = (np.sin(x / 3000 + phase[0]) * np.cos(rows / 2100 + phase[1]) +
               0.5 * np.sin((x + rows) / 700 + phase[2]))
      noise = rng.normal(0, 30, (len(rows), n))
      dn = 1000 + 1500 + 200 * band_index + 600 * field + noise  # L1C: +1000 offset
      ds.write(np.clip(dn, 1, 65535).astype(np.uint16)[None], window=Window(0, r0, n, len(rows)))


def write_product(product: str, size: int) -> None:
  """The 13 band files of the synthetic granule in `product` (existing files are kept)."""
  os.makedirs(product, exist_ok=True)
  for i, band in enumerate(S2_L1C_BANDS):
    path = os.path.join(product, f"T33UXP_20230615T100031_{band}.tif")
    if not os.path.exists(path):
      write_band(path, i, size, S2_NATIVE_GSD[band])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=10980, help="10 m pixels per side")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--keep", action="store_true", help="keep the product and dataset")
  parser.add_argument("--beam", action="store_true", help="build on Beam (DirectRunner)")
  parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
  parser.add_argument("--read_only", action="store_true",
                      help="with --beam: only the read step (each unit's tiles counted, not "
                           "written), to see a worker's memory apart from DirectRunner's "
                           "in-memory shuffle")
  args = parser.parse_args()
  work = args.workdir or tempfile.mkdtemp(prefix="ee_build_scene_")
  product = os.path.join(work, PRODUCT)
  os.makedirs(product, exist_ok=True)
  t0 = time.time()
  write_product(product, args.size)
  print(f"product written: {product} ({time.time() - t0:.1f} s)")

  data_dir = os.path.join(work, "tfds")
  shutil.rmtree(data_dir, ignore_errors=True)
  beam = ""
  if args.beam:
    beam = (", beam_runner='DirectRunner', beam_options='--direct_num_workers="
            f"{args.workers} --direct_running_mode=multi_processing'")
  build = (
      "import ml_collections\n"
      "from benchmarks import process_peaks\n"
      "from ee_jax.data import datasets\n"
      "cfg = ml_collections.ConfigDict(dict(name='s2_tiles', config_name='fullscene', "
      f"data_dir={data_dir!r}, builder=dict(source='manual', products=[{product!r}])"
      f"{beam}))\n"
      "with process_peaks.watch() as peaks:\n"
      "  b = datasets.prepare(cfg, log=lambda *a: None)\n"
      "print(datasets.summary(b).splitlines()[1:3])\n"
      "print(process_peaks.report(peaks))\n")
  if args.read_only:
    build = build.split("with process_peaks")[0] + (
        "import apache_beam as beam\n"
        "from ee_jax.data import beam_config\n"
        "from tfds_builders import beam_tiles\n"
        "b = datasets.make_builder(cfg)\n"
        "b.data_path.mkdir(parents=True, exist_ok=True)\n"
        "opts = beam_config.pipeline_options(beam_config.flags(cfg))\n"
        "with process_peaks.watch() as peaks:\n"
        "  with beam.Pipeline(options=opts) as p:\n"
        "    outs = beam_tiles.read_units(b, p)\n"
        "    for s in b._split_names():\n"
        "      _ = (outs[s] | f'Count_{s}' >> beam.combiners.Count.Globally()\n"
        "           | f'Print_{s}' >> beam.Map(lambda n, s=s: print(s, n, 'tiles read')))\n"
        "print(process_peaks.report(peaks))\n")
  t0 = time.time()
  subprocess.run([sys.executable, "-c", build], check=True, cwd=REPO,
                 env={**os.environ, "TFDS_DISABLE_PROGRESS_BAR": "1"})
  seconds = time.time() - t0
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
  pixels = args.size ** 2
  print(f"scene {args.size}x{args.size} px, 13 bands: build {seconds:.1f} s "
        f"({pixels / seconds / 1e6:.2f} Mpx/s), peak RSS {peak:.2f} GiB (target < 2 GiB)")
  if not args.keep and not args.workdir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
