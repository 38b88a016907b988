"""What the configs of the paper's benchmarks share (configs/study_<dataset>.py).

Each benchmark file names its dataset, builder parameters, crop and batch; this builds the
label-fraction study on it (the `study` section of configs/defaults.py: fractions 1 ...
1/64, pretrained and random, 3 seeds, each run fine-tuned with its arm's candidate recipes,
defaults.STUDY_CANDIDATES, keeping the best on validation; `smoke`: `lp_ft` alone). The same file gives the
pre-training config the study runs first: `get_config('pretrain')` (or 'pretrain_smoke'),
on the same dataset's train split, since the benchmarks have no separate unlabelled split.
The one thing a user sets is `--config.data.builder.manual_dir=PATH` (the downloaded
dataset).

Time series of varying length (padded, valid=False) need a backbone that takes any number
of dates: here the UNet with `model.temporal='shared'` (its masked temporal pooling ignores
padded dates); `model.backbone='unet3d'` or `'temporal_attention'` take them too and can
replace it; not yet compared on these benchmarks.

Produced: none of the benchmark configs has been run on real data yet (only on the tests'
small fixtures in each dataset's layout).
"""

from configs import defaults
from ee_jax.data import datasets

FRACTIONS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
VARIANTS = (None, "smoke", "pretrain", "pretrain_smoke")


def benchmark_config(*, path: str, dataset: str, config_name: str, builder: dict,
                     variant: str | None, crop_size: int, per_device_batch: int):
  """The study (variant None/'smoke') or its pre-training ('pretrain'/'pretrain_smoke')."""
  variant = defaults.parse_arg(variant, VARIANTS[1:], path)
  smoke = variant in ("smoke", "pretrain_smoke")
  c = defaults.get_base_config()
  c.data.name = dataset
  c.data.config_name = "smoke" if smoke else config_name
  c.data.builder.update(datasets.builder_class(dataset).DEFAULT_PARAMS)
  c.data.builder.update(builder)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.per_device_batch = per_device_batch
  c.model.temporal = "shared"      # any T, masked pooling over padded dates
  c.augment.crop_size = crop_size  # 0: the whole tile
  c.augment.crop_shift = crop_size // 8
  if variant in ("pretrain", "pretrain_smoke"):
    defaults.masked_objective(c)
    c.loss.positive_jitter = 2  # InfoNCE's views, when its weight is set
    c.loss.positive_not_self = True
    c.loss.exclude_radius = 8.0
    c.loss.temperature = 0.2
    c.optim.warmup_steps = 100
    c.train.steps = 5000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
  else:
    defaults.add_finetune(c)
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    c.train.steps = 2000
    c.train.log_every = 50
    c.train.checkpoint_every = 500
  if smoke:  # a tiny model and a few steps (the tests' fixtures)
    defaults.smoke(c)
    c.augment.crop_size = 8
    c.augment.crop_shift = 2
    c.data.per_device_batch = 2
  if variant in (None, "smoke"):  # the study, pre-training first with this same file
    defaults.add_study(c, pretrain_config=path,
                       pretrain_arg="pretrain_smoke" if smoke else "pretrain",
                       fractions=(1.0, 1 / 2) if smoke else FRACTIONS,
                       seeds=(0,) if smoke else (0, 1, 2), smoke=smoke)
  return c
