"""A whole synthetic_landcover scene as files, to run scene inference on (and score it).

The synthetic builder generates scenes in memory and cuts them into tiles; this writes one
scene as a time series of multi-band GeoTIFFs (band descriptions, DN 0 = nodata where the
builder marks a pixel unobserved) plus a manifest CSV with the dates and the label raster,
so `--mode=predict --scene=<dir>/manifest.csv` sees exactly the model inputs the tiles
held, and `score` compares a class map with the truth.

  python -m ee_jax.inference.synthetic write --workdir=W --out_dir=D [--split=test --index=0]
  python -m ee_jax.inference.synthetic score --pred=map.tif --label=D/label.tif
"""

import argparse
import csv
import json
import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ee_jax import checkpoints
from ee_jax.data import contract
from ee_jax.errors import DataError


def write_synthetic_scene(builder_params: dict, out_dir: str, split: str = "test",
                          index: int = 0) -> dict:
  """Writes scene `index` of `split`; returns {'manifest', 'label', 'dates', 'size'}."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tfds_builders.synthetic_landcover.builder import (  # pylint: disable=import-outside-toplevel
      _CRS, _GSD, SyntheticLandcover)
  builder = SyntheticLandcover(params=builder_params, data_dir="/nonexistent",
                               config=tfds.core.BuilderConfig(name="scene"))
  g = builder.generate_scene(split, index)
  image, valid, label, dates = g["image"], g["valid"], g["label"], g["dates"]
  bands = builder._bands()  # pylint: disable=protected-access
  t, h, w, c = image.shape
  transform = from_origin(g["origin"][0], g["origin"][1], _GSD, _GSD)
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for i in range(t):
    # DN 0 marks nodata for the reader: unobserved pixels 0, observed ones at least 1.
    data = np.where(valid[i, ..., None], np.maximum(image[i], 1), 0).astype(np.uint16)
    path = os.path.join(out_dir, f"synthetic_{split}_{index:05d}_{dates[i]}.tif")
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype="uint16",
                       crs=_CRS, transform=transform, nodata=0, compress="deflate",
                       tiled=True) as ds:
      ds.write(np.moveaxis(data, -1, 0))
      for b, name in enumerate(bands, start=1):
        ds.set_band_description(b, name)
    rows.append({"path": os.path.basename(path), "date": int(dates[i])})
  manifest = os.path.join(out_dir, "manifest.csv")
  with open(manifest, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path", "date"])
    writer.writeheader()
    writer.writerows(rows)
  label_path = os.path.join(out_dir, "label.tif")
  with rasterio.open(label_path, "w", driver="GTiff", width=w, height=h, count=1,
                     dtype="uint8", crs=_CRS, transform=transform,
                     nodata=contract.IGNORE_INDEX) as ds:
    ds.write(label[None])
  return {"manifest": manifest, "label": label_path, "dates": [int(d) for d in dates],
          "size": (h, w)}


def score(pred_path: str, label_path: str, num_classes: int | None = None,
          ignore_index: int = contract.IGNORE_INDEX) -> dict:
  """Overall accuracy and mIoU of a class map against a label raster (same grid)."""
  with rasterio.open(pred_path) as p, rasterio.open(label_path) as t:
    if (p.crs, p.transform, p.shape) != (t.crs, t.transform, t.shape):
      raise DataError(f"{pred_path} and {label_path} are not on the same grid")
    pred, truth = p.read(1).astype(np.int64), t.read(1).astype(np.int64)
  k = num_classes or int(max(pred[pred != 255].max(initial=0), truth[truth != ignore_index]
                             .max(initial=0)) + 1)
  keep = (truth != ignore_index) & (pred != 255)
  cm = np.bincount(truth[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
  tp = np.diag(cm).astype(np.float64)
  union = cm.sum(0) + cm.sum(1) - tp
  present = union > 0
  return {"oa": float(tp.sum() / max(cm.sum(), 1)),
          "miou": float((tp[present] / union[present]).mean()) if present.any() else 0.0,
          "pixels": int(keep.sum())}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  w = sub.add_parser("write", help="write a scene of the checkpoint's synthetic dataset")
  w.add_argument("--workdir", required=True, help="a run trained on synthetic_landcover")
  w.add_argument("--out_dir", required=True)
  w.add_argument("--split", default="test")
  w.add_argument("--index", type=int, default=0)
  s = sub.add_parser("score", help="OA and mIoU of a class map against label.tif")
  s.add_argument("--pred", required=True)
  s.add_argument("--label", required=True)
  args = parser.parse_args(argv)
  if args.command == "write":
    _, meta = checkpoints.load_params(args.workdir)
    data = (meta.get("config") or {}).get("data") or {}
    if data.get("name") != "synthetic_landcover":
      raise SystemExit(f"error: {args.workdir} was not trained on synthetic_landcover")
    out = write_synthetic_scene(data.get("builder") or {}, args.out_dir, args.split, args.index)
    print(json.dumps(out))
  else:
    print(json.dumps(score(args.pred, args.label)))


if __name__ == "__main__":
  main()
