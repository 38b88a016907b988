"""The label-fraction study on a real hand-labelled chip: Sen1Floods11's Spain_7370579.

  python launch.py --mode=study --config=configs/study_sen1floods11.py --workdir=W

reads ../shared/data/sen1floods11 (relative to the repo root; `:FOLDER` for another folder
holding the same two files, `:smoke` or `:FOLDER,smoke` for a tiny run):
  Spain_7370579_S2Hand.tif     13-band L1C (B1 ... B12 with B8A, named in the band
                               descriptions), 512 x 512 px, int16, EPSG:4326, nodata 0
  Spain_7370579_LabelHand.tif  -1 no data (ignored), 0 not water, 1 water
32 px tiles (256), split in blocks of 2 x 2 tiles 70/15/15 %. Bands: the 12 every real
source has (B10 left out, configs/_shared_data.py), so that a pre-training on other regions
fits.

Pre-training: configs/pretrain_s2.py:demo (its narrow UNet, 300 steps, 32 px crops) on the
same chip without its labels (an s2_tiles build in 32 px tiles). Transfer between regions
instead: `--config.study.pretrain_workdir=W_real`, a run of configs/pretrain_real.py (the
pretrained arm normalises with its statistics: init.allow_stats_mismatch is set by the
study).

One chip of one flood: a real sanity check, not a benchmark.

What it shows with the shipped defaults (seeds 0-2; docs/pretraining.md, sections 11g and
12c): pre-training on the chip gains nothing measurable over random initialisation, LightGBM
leads the deep arms by 1.8-2.6 mIoU down to 1/16, and the chip's embedding beside the pixels
adds nothing to LightGBM (within a point at every fraction).
"""

import os

from configs import _shared_data, defaults, finetune_landcover
from tfds_builders.s2_tiles.builder import S2Tiles

CHIP = "Spain_7370579"
CLASSES = (("not_water", 0), ("water", 1))
TILE = 32


def get_config(arg: str | None = None):
  folder, smoke = _shared_data.folder_and_smoke(
      arg, "configs/study_sen1floods11.py", os.path.join(_shared_data.SHARED_DATA, "sen1floods11"),
      f"FOLDER (holding {CHIP}_S2Hand.tif and {CHIP}_LabelHand.tif)")
  bands = _shared_data.COMMON_BANDS
  image = os.path.join(folder, f"{CHIP}_S2Hand.tif")
  c = finetune_landcover.get_config("smoke" if smoke else None)
  c.data.config_name = "sen1floods11_smoke" if smoke else "sen1floods11"
  c.data.builder.update(dict(
      scenes=({"image": image, "label": os.path.join(folder, f"{CHIP}_LabelHand.tif"),
               "scene_id": CHIP},),
      classes=CLASSES, label_nodata="-1", bands=bands, tile_size=TILE, stride=TILE,
      block_tiles=2))
  if smoke:
    c.data.per_device_batch = 4
  pretrain_data = dict(
      name="s2_tiles", config_name=c.data.config_name + "_unlabelled", data_dir="",
      builder=dict(S2Tiles.DEFAULT_PARAMS, source="manual", products=(image,), bands=bands,
                   tile_size=32, stride=32, block_tiles=4))
  defaults.add_study(c, pretrain_config="configs/pretrain_s2.py",
                     pretrain_arg="smoke" if smoke else "demo", pretrain_data=pretrain_data,
                     fractions=(1.0, 1 / 2) if smoke else (1.0, 1 / 4, 1 / 16, 1 / 64),
                     seeds=(0,) if smoke else (0, 1, 2, 3, 4), smoke=smoke)
  if not smoke:
    _shared_data.short_runs(c)
  return c
