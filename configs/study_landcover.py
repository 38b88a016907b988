"""The label-fraction study on your own rasters (a `landcover_tiles` dataset).

  python launch.py --mode=study --config=configs/study_landcover.py:/data/area --workdir=W

reads the folder /data/area:
  dataset.json           {"bands": ["B02", "B03", "B04", "B08"],   bands the model reads
                          "band_order": [...],      order in the GeoTIFFs (default: bands)
                          "classes": [["crop", 1], ["forest", [2, 3]]],   name, raw value(s)
                          "label_nodata": -1}       optional ('auto': the label file's nodata)
  <name>.tif + <name>_label.tif   one labelled scene per pair (image and label on one grid)
  unlabelled/*.tif       optional: other imagery to pre-train on (an s2_tiles build); without
                         it the pre-training reads the labelled scenes' images

Bands and band order are set once, for every image of both datasets. The pretrained arm
normalises with the statistics saved in the pre-training checkpoint (other imagery is the
normal case), the random arm with the labelled dataset's own; the band lists must match.
`study.pretrain_workdir=W0` uses a finished pre-training instead. Append `,smoke` to the
argument (or use `:smoke` alone and fill the fields in Python) for a tiny, fast run.

By default 4 fractions x 2 inits x 5 seeds (0-4): the pretrained arm fine-tuned with
`lp_ft` and `frozen_input` (the backbone frozen, a linear head on its features beside the
input), the random arm with those and `full`, each run keeping the best on validation
(`defaults.STUDY_CANDIDATES`): 100 fine-tunings (40 of them head-only) and 100 validation
passes after the pre-training. `smoke`: 2 fractions, 1 seed, `lp_ft` alone.

Produced: not yet run on real data (only on the tests' small rasters); its cost is not yet
measured.
"""

import glob
import json
import os

from configs import defaults, finetune_landcover
from tfds_builders.s2_tiles.builder import S2Tiles

SMOKE_TILE = 32


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke",), "configs/study_landcover.py",
                          also=(_folder_arg, "a folder of rasters, or 'folder,smoke'"))
  parts = [p for p in (arg or "").split(",") if p]
  smoke = "smoke" in parts
  folders = [p for p in parts if p != "smoke"]
  c = finetune_landcover.get_config("smoke" if smoke else None)
  c.data.config_name = "my_study"
  p = dict(S2Tiles.DEFAULT_PARAMS, source="manual", split_fractions={"train": 0.9,
                                                                     "validation": 0.1})
  # The pre-training's dataset (its config's data section is replaced by this): an s2_tiles
  # build of other, unlabelled imagery.
  pretrain_data = dict(name="s2_tiles", config_name="my_study_unlabelled", data_dir="",
                       builder=p)
  defaults.add_study(c, pretrain_config="configs/pretrain_s2.py",
                     pretrain_arg="smoke" if smoke else "", pretrain_data=pretrain_data,
                     fractions=(1.0, 1 / 2) if smoke else (1.0, 1 / 4, 1 / 16, 1 / 64),
                     seeds=(0,) if smoke else (0, 1, 2, 3, 4), smoke=smoke)
  if smoke:
    for b in (c.data.builder, c.study.pretrain_data.builder):
      b.tile_size = b.stride = SMOKE_TILE
      b.block_tiles = 1
  if folders:
    _from_folder(c, folders[0])
  return c


def _folder_arg(arg: str) -> bool:
  """`folder`, `folder,smoke` or `smoke,folder`: one folder, which exists."""
  folders = [p for p in arg.split(",") if p and p != "smoke"]
  return len(folders) <= 1 and all(os.path.isdir(f) for f in folders)


def _from_folder(c, folder: str) -> None:
  """Fills both datasets from `folder` (see the module docstring)."""
  spec_path = os.path.join(folder, "dataset.json")
  if not os.path.isfile(spec_path):
    raise ValueError(f"{spec_path}: not found; it names the bands and classes")
  with open(spec_path) as f:
    spec = json.load(f)
  missing = [k for k in ("bands", "classes") if k not in spec]
  if missing:
    raise ValueError(f"{spec_path}: missing {missing}")
  bands = tuple(spec["bands"])
  order = tuple(spec.get("band_order") or bands)

  def source(path):
    return {"path": os.path.abspath(path), "band_order": order}

  labels = sorted(glob.glob(os.path.join(folder, "*_label.tif")))
  if not labels:
    raise ValueError(f"{folder}: no <name>.tif + <name>_label.tif pairs")
  scenes = []
  for label in labels:
    image = label[: -len("_label.tif")] + ".tif"
    if not os.path.isfile(image):
      raise ValueError(f"{label}: no image {os.path.basename(image)} beside it")
    scenes.append({"images": [source(image)], "label": os.path.abspath(label),
                   "scene_id": os.path.basename(image)[:-4]})
  unlabelled = sorted(glob.glob(os.path.join(folder, "unlabelled", "*.tif")))
  products = [source(p) for p in unlabelled] or [s["images"][0] for s in scenes]
  c.data.builder.scenes = tuple(scenes)
  c.data.builder.classes = tuple(tuple(x) for x in spec["classes"])
  c.data.builder.label_nodata = spec.get("label_nodata", "auto")
  c.data.builder.bands = bands
  c.study.pretrain_data.builder.products = tuple(products)
  c.study.pretrain_data.builder.bands = bands
  name = os.path.basename(os.path.abspath(folder))
  c.data.config_name = name
  c.study.pretrain_data.config_name = f"{name}_unlabelled"
