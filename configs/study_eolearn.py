"""The label-fraction study on a real labelled time series: the eo-learn Slovenia patch.

  python launch.py --mode=study --config=configs/study_eolearn.py --workdir=W

reads ../shared/data/eolearn_slovenia (relative to the repo root; `:FOLDER` for a copy in
the same layout, `:smoke` or `:FOLDER,smoke` for a tiny run):
  s2l1c/manifest.csv   path,date of 5 dated 13-band L1C GeoTIFFs (S2_L1C_<date>.tif,
                       2015-07-11 ... 09-09), 101 x 100 px at 10 m, EPSG:32633
  s2l1c/CLM_<date>.tif cloud masks (1 = cloud), used where present: 07-31 and 08-20 are
                       cloudy over the whole patch, so their pixels are invalid
  LULC.tif             land cover, uint8 on the same grid, 0 = no data
One scene of T=5 dates (landcover_tiles, `images` = the manifest's entries with their cloud
masks) in 16 px tiles (36 tiles, split by single tiles 70/15/15 %: 25/5/6; a tile may have
up to half of its pixels over the dates invalid, `max_invalid=0.5`), classes 1 cultivated,
2 forest, 3 grassland, 4 shrubland, 8 artificial (the ones present; other values are
ignored). Bands: the 12 every real source has (B10 left out, configs/_shared_data.py), so
that a pre-training on other regions fits.

Pre-training: configs/pretrain_s2.py:demo (its narrow UNet, 300 steps, 32 px crops, dates
stacked) on the same five images without their labels (an s2_tiles time series of 32 px
tiles at stride 8, so that a global batch fits). Transfer between regions instead:
`--config.study.pretrain_workdir=W_real`, a run of configs/pretrain_real.py (the study
fine-tunes its architecture, which takes any number of dates; the pretrained arm
normalises with its statistics: init.allow_stats_mismatch is set by the study).

The patch is tiny (10,100 px; forest 75 %, cultivated land 11 px) and two of its five dates
are clouded out: a real sanity check, not a benchmark.

What it shows with the shipped defaults (seeds 0-2; docs/pretraining.md, sections 11g and
12c): test mIoU 20-25 for every arm and baseline; pre-training gains +1.4 ± 0.7 with all the
labels and nothing measurable below; the linear baseline is level with the deep arms below
fraction 1; the embedding beside the pixels adds nothing to LightGBM. 6 test tiles: mostly
the rare classes' luck.
"""

import os

from configs import _shared_data, defaults, finetune_landcover
from ee_jax.geo.bands import parse_date
from tfds_builders.s2_tiles.builder import S2Tiles, read_manifest

CLASSES = (("cultivated", 1), ("forest", 2), ("grassland", 3), ("shrubland", 4),
           ("artificial", 8))
TILE = 16
MAX_INVALID = 0.5


def images(folder: str):
  """The manifest's images, each with its cloud mask `CLM_<date>.tif` where there is one;
  without the manifest, its path (the build then names it as missing)."""
  manifest = os.path.join(folder, "s2l1c", "manifest.csv")
  if not os.path.isfile(manifest):
    return manifest
  entries = []
  for entry in read_manifest(manifest):
    date = parse_date(entry.get("date", 0), manifest)
    mask = os.path.join(folder, "s2l1c", f"CLM_{date}.tif")
    entries.append({**entry, "cloud_mask": mask} if os.path.isfile(mask) else entry)
  return tuple(entries)


def get_config(arg: str | None = None):
  folder, smoke = _shared_data.folder_and_smoke(
      arg, "configs/study_eolearn.py", os.path.join(_shared_data.SHARED_DATA, "eolearn_slovenia"),
      "FOLDER (eolearn_slovenia's layout)")
  bands = _shared_data.COMMON_BANDS
  series = images(folder)
  c = finetune_landcover.get_config("smoke" if smoke else None)
  c.data.config_name = "eolearn_slovenia_smoke" if smoke else "eolearn_slovenia"
  c.data.builder.update(dict(
      scenes=({"images": series, "label": os.path.join(folder, "LULC.tif"),
               "scene_id": "eolearn_slovenia"},),
      classes=CLASSES, label_nodata="0", bands=bands, tile_size=TILE, stride=TILE,
      block_tiles=1, max_invalid=MAX_INVALID))
  c.data.per_device_batch = 4 if smoke else 8
  source = {"manifest": series} if isinstance(series, str) else {"products": series}
  pretrain_data = dict(
      name="s2_tiles", config_name=c.data.config_name + "_unlabelled", data_dir="",
      builder=dict(S2Tiles.DEFAULT_PARAMS, source="manual", time_series=True,
                   scene_id="eolearn_slovenia", bands=bands, tile_size=32, stride=8,
                   block_tiles=4, max_invalid=MAX_INVALID, **source))
  defaults.add_study(c, pretrain_config="configs/pretrain_s2.py",
                     pretrain_arg="smoke" if smoke else "demo", pretrain_data=pretrain_data,
                     fractions=(1.0, 1 / 2) if smoke else (1.0, 1 / 2, 1 / 4, 1 / 8),
                     seeds=(0,) if smoke else (0, 1, 2, 3, 4), smoke=smoke)
  if not smoke:
    _shared_data.short_runs(c)
  return c
