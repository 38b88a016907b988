"""Seconds per MiB of reading and building MTLCC, on the tests' fixture (480 m tiles).

Two figures, per MiB of uncompressed TFRecord bytes (what the CRCs cover): the reader alone
(gunzip, both CRCs of every record, Example decoding) and the whole build (`datasets.prepare`:
the reader plus upsampling and TFDS writing). Issue 31 asked for the build to be >= 10x
faster than with the pure-Python CRC32C (0.19 s per MiB). Best of `--repeats`.

  PYTHONPATH=. python benchmarks/mtlcc_build.py [--repeats 3]
"""

import argparse
import glob
import gzip
import os
import pathlib
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ml_collections  # noqa: E402

from ee_jax.data import datasets  # noqa: E402
from tests.test_benchmark_builders import write_mtlcc  # noqa: E402
from tfds_builders.mtlcc import parse_example, read_records, tfrecord  # noqa: E402

SIZE = 480  # metres: 48 px tiles, about 0.6 MiB of records each


def best_of(repeats: int, fn) -> float:
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp) / "src"
    write_mtlcc(root, size=SIZE)
    files = sorted(glob.glob(str(root / "**" / "*.tfrecord.gz"), recursive=True))
    mib = sum(len(gzip.open(f, "rb").read()) for f in files) / 2**20

    def read(_):
      for f in files:
        for record in read_records(f):
          parse_example(record)

    def build(i):
      cfg = ml_collections.ConfigDict(dict(
          name="mtlcc", config_name="bench", data_dir=os.path.join(tmp, f"tfds{i}"),
          builder=ml_collections.ConfigDict(dict(manual_dir=str(root), size=SIZE))))
      datasets.prepare(cfg, log=lambda *a: None)

    impl = getattr(tfrecord, "CRC32C_IMPL", "python table")
    print(f"fixture: {len(files)} files, {mib:.2f} MiB of records; CRC32C: {impl}")
    for name, fn in (("reader", read), ("build", build)):
      t = best_of(args.repeats, fn)
      print(f"{name}: {t:.3f} s, {t / mib:.4f} s per MiB (best of {args.repeats})")


if __name__ == "__main__":
  main()
