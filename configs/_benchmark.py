"""What the configs of the paper's benchmarks share (configs/study_<dataset>.py).

Each benchmark file names its dataset, builder parameters, crop and batch; this builds the
label-fraction study on it in the structure of configs/study_synthetic.py. The same file
gives the pre-training config the study runs first: `get_config('pretrain')` (or
'pretrain_smoke'), on the same dataset's train split, since the benchmarks have no
separate unlabelled split. The one thing a user sets is
`--config.data.builder.manual_dir=PATH` (the downloaded dataset).

Time series of varying length (padded, valid=False) need a backbone that takes any T: the
UNet with `model.temporal='shared'` (its masked temporal pooling ignores padded dates), or
`model.backbone='unet3d'` / `'temporal_attention'`.
"""

from configs import defaults
from ee_jax.data import datasets

FRACTIONS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
VARIANTS = (None, "smoke", "pretrain", "pretrain_smoke")


def benchmark_config(*, path: str, dataset: str, config_name: str, builder: dict,
                     variant: str | None, crop_size: int, per_device_batch: int):
  """The study (variant None/'smoke') or its pre-training ('pretrain'/'pretrain_smoke')."""
  if variant not in VARIANTS:
    raise ValueError(f"{path}: unknown variant '{variant}' (known: {VARIANTS[1:]})")
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
    c.train.eval_every = 0  # study runs: only the final test
    c.train.checkpoint_every = 500
    c.study = dict(
        fractions=FRACTIONS,
        inits=("pretrained", "random"),
        seeds=(0, 1, 2),
        pretrain_config=path,
        pretrain_arg="pretrain_smoke" if smoke else "pretrain",
        pretrain_workdir="",
        recipes=defaults.study_recipes(),
        candidates=defaults.STUDY_CANDIDATES,
        select_split="validation",
        # The runs of one fraction and recipe train as one compiled step ('auto': on
        # GPU/TPU, run by run on CPU where it measured slower; 'always'; 'never');
        # vmap_width: runs vectorised at a time (0 = all).
        train_together="auto",
        vmap_width=0,
    )
  if smoke:  # a tiny model and a few steps (the tests' fixtures)
    defaults.smoke(c)
    c.augment.crop_size = 8
    c.augment.crop_shift = 2
    c.data.per_device_batch = 2
    if "study" in c:
      c.train.eval_every = 0
      c.study.fractions = (1.0, 1 / 2)
      c.study.seeds = (0,)
      defaults.smoke_study(c)
  return c
