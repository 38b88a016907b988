"""Segmentation fine-tuning on any `landcover_tiles` dataset (your image + label rasters).

Set the scenes and the class map, e.g. for the Sen1Floods11 chip:

  python launch.py --mode=finetune --config=configs/finetune_landcover.py --workdir=W2 \\
    --config.data.config_name=floods \\
    --config.data.builder.scenes="({'image': 'S2Hand.tif', 'label': 'LabelHand.tif'},)" \\
    --config.data.builder.classes="(('not_water', 0), ('water', 1))" \\
    --config.data.builder.label_nodata=-1 --config.init.checkpoint=W

or, better, copy this file and fill `c.data.builder` in it. Argument `:smoke`.

Produced: not yet run on real data (only on the tests' small rasters).
"""

from configs import defaults
from tfds_builders.landcover_tiles.builder import LandcoverTiles


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke",), "configs/finetune_landcover.py")
  c = defaults.get_base_config()
  defaults.add_finetune(c)
  c.data.name = "landcover_tiles"
  c.data.config_name = "my_landcover"
  c.data.builder.update(LandcoverTiles.DEFAULT_PARAMS)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.per_device_batch = 16
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  if arg == "smoke":
    defaults.smoke(c)
  return c
