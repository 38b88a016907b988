"""Pre-training on the unlabelled split of `synthetic_landcover` (6 dates, 13 bands).

The controlled benchmark: top-1 positive retrieval on the validation split must rise far
above chance. Argument `:smoke` for a tiny, fast run.
"""

from configs import defaults
from tfds_builders.synthetic_landcover.builder import SyntheticLandcover


def get_config(arg: str | None = None):
  c = defaults.get_base_config()
  c.data.name = "synthetic_landcover"
  c.data.config_name = "default"
  c.data.builder.update(SyntheticLandcover.DEFAULT_PARAMS)
  c.data.train_split = "unlabelled"
  c.data.eval_split = "validation"
  c.data.per_device_batch = 16
  c.model.temporal = "stack"
  c.augment.crop_size = 24
  c.train.steps = 300
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.optim.warmup_steps = 30
  if arg == "smoke":
    defaults.smoke(c)
    c.augment.crop_size = 16
    c.data.config_name = "smoke"
    c.data.builder.num_tiles = {"unlabelled": 64, "train": 32, "validation": 32, "test": 16}
  elif arg == "demo":  # a narrower model, for `make demo` on 2 CPU cores
    c.model.widths = (16, 32, 64, 128)
    c.model.features = 32
    c.train.steps = 200
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
  elif arg:
    raise ValueError(f"configs/pretrain_synthetic.py: unknown argument '{arg}' "
                     f"(known: smoke, demo)")
  return c
