"""Scene inference speed and memory: megapixels/s and peak RSS of `--mode=predict` (or embed).

Writes a synthetic 13-band Sentinel-2 L1C product (band files at their native 10/20/60 m
resolutions, like a real granule; default 4096 x 4096 px at 10 m) and a fine-tuned-like
checkpoint of the default model (random weights: speed does not depend on them), then
runs scene inference in a child process so its peak RSS is measured alone
(target: under 1.5 GiB).

  python benchmarks/predict_scene.py [--size 4096] [--mode predict|embed] [--model default|smoke]
      [--tile_size 256] [--overlap 0.25] [--per_device_batch 0] [--probabilities]
      [--workdir /tmp/x] [--keep]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from build_scene import PRODUCT, write_product  # noqa: E402  (the same synthetic granule)

from ee_jax.geo.bands import S2_L1C_BANDS  # noqa: E402

CHILD = """
import json, sys
from ee_jax import inference
kind, ckpt, scene, out, opts = sys.argv[1:6]
fn = inference.predict_scene if kind == 'predict' else inference.embed_scene
s = fn(ckpt, scene, out, **json.loads(opts))
print('RESULT ' + json.dumps(dict(pixels=s.pixels, seconds=s.seconds, mpx_per_s=s.mpx_per_s,
                                  tiles=s.tiles, phases=s.phases, outputs=s.outputs)))
"""


def make_checkpoint(workdir: str, model: str, num_classes: int, tile_size: int) -> None:
  """A 'finetune' checkpoint of the default (or smoke) model, random weights."""
  import jax  # pylint: disable=import-outside-toplevel
  from ee_jax import checkpoints, models  # pylint: disable=import-outside-toplevel
  cfg = models.default_config()
  if model == "smoke":
    cfg.widths, cfg.features, cfg.num_groups = (8, 16), 16, 4
  seg = models.build_segmentation_model(cfg, num_classes)
  params = models.init_params(seg, jax.random.PRNGKey(0), (1, 1, 64, 64, 13), with_valid=True)
  meta = {"kind": "finetune", "bands": list(S2_L1C_BANDS),
          "mean": [1500.0 + 200 * i for i in range(13)], "std": [600.0] * 13,
          "num_dates": 1, "tile_size": tile_size, "gsd": 10.0, "offsets_removed": {},
          "resampling": "bilinear", "model": cfg.to_dict(), "config": {},
          "num_classes": num_classes, "class_names": [f"class_{i}" for i in range(num_classes)],
          "ignore_index": 255}
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(0, {"step": 0, "params": params, "opt_state": {}}, meta, wait=True)
  ckpt.close()
  print(f"checkpoint: {workdir} ({models.count_params(params):,} parameters, "
        f"model {model})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=4096, help="10 m pixels per side")
  parser.add_argument("--mode", choices=("predict", "embed"), default="predict")
  parser.add_argument("--model", choices=("default", "smoke"), default="default")
  parser.add_argument("--tile_size", type=int, default=0, help="0: the inference default")
  parser.add_argument("--overlap", type=float, default=0.25)
  parser.add_argument("--per_device_batch", type=int, default=0,
                      help="0: the inference default (2 on CPU, 8 on GPU/TPU)")
  parser.add_argument("--probabilities", action="store_true")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--keep", action="store_true", help="keep the product and outputs")
  args = parser.parse_args()
  work = args.workdir or tempfile.mkdtemp(prefix="ee_predict_scene_")
  product = os.path.join(work, f"{PRODUCT}_{args.size}")
  os.makedirs(product, exist_ok=True)
  t0 = time.time()
  write_product(product, args.size)
  print(f"product: {product} ({args.size}x{args.size} px, 13 bands; {time.time() - t0:.1f} s)")
  ckpt = os.path.join(work, f"ckpt_{args.model}")
  if not os.path.isdir(ckpt):
    make_checkpoint(ckpt, args.model, num_classes=8, tile_size=64)

  out = os.path.join(work, "out", f"{args.mode}.tif")
  opts = dict(overlap=args.overlap, per_device_batch=args.per_device_batch)
  if args.tile_size:
    opts["tile_size"] = args.tile_size
  if args.mode == "predict":
    opts["probabilities"] = args.probabilities
  t0 = time.time()
  result = None
  with subprocess.Popen([sys.executable, "-c", CHILD, args.mode, ckpt, product, out,
                         json.dumps(opts)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                        env={**os.environ, "PYTHONPATH": REPO}) as proc:
    for line in proc.stdout:
      if line.startswith("RESULT "):
        result = json.loads(line[7:])
      else:
        print(line, end="", flush=True)
  if proc.returncode or result is None:
    sys.exit(f"inference failed (exit status {proc.returncode})")
  wall = time.time() - t0
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
  sizes = {k: os.path.getsize(v) / 2**20 for k, v in result["outputs"].items()}
  phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phases"].items())
  tiles_s = result["phases"].get("tiles") or result["seconds"]
  print(f"\n{args.mode} {args.size}x{args.size} px x 13 bands, model {args.model}, options {opts}")
  print(f"  total      {result['seconds']:.1f} s ({wall:.1f} s with process start and "
        f"imports): {result['mpx_per_s']:.3f} Mpx/s")
  print(f"  phases     {phases}; read+forward+blend alone "
        f"{result['pixels'] / tiles_s / 1e6:.3f} Mpx/s")
  print(f"  peak RSS   {peak:.2f} GiB (target < 1.5 GiB)")
  print("  outputs    " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()))
  print(f"  CPU load   {os.getloadavg()[0]:.1f} (1-min average, {os.cpu_count()} cores)")
  if not args.keep and not args.workdir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
