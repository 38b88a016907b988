"""Pre-training on the unlabelled split of `synthetic_landcover` (6 dates, 13 bands).

  python launch.py --mode=pretrain --config=configs/pretrain_synthetic.py --workdir=W

Arguments: none (the default UNet with 128 features, 4000 steps of 16 tiles, masked
reconstruction of the bands and of each date's spectral shape), `:wide` (the pre-training
of the shipped study, configs/study_synthetic.py: the full-resolution level twice as wide,
widths (64, 64, 128, 256), and 3000 steps: features that hold more land cover than the
pixels at every fraction probed, each fine-tuning about 1.8x as long; docs/pretraining.md,
sections 12e, 13 and 14), `:demo` (a narrower model, 200 steps: the pre-training of `make
demo`'s study), `:smoke`.

Produced (docs/pretraining.md, section 10; 28 min alone on the 2-core AMD EPYC VM): a
linear probe of its features (benchmarks/feature_probe.py) reaches test mIoU 59.1 / 65.2 /
66.6 on 1/64 / 1/16 / 1/4 of the labels with seed 0, 58.1 / 64.8 / 66.2 with seed 1 (raw
pixels averaged over 3x3: 54.5 / 62.6 / 66.3). The same schedule cut to 2000 steps probed 57.9 /
63.6 / 65.9 and fine-tuned 1.8 / 1.1 points lower at 1/64 / 1/16 in the study (section 9):
length still pays at this width. Before the shape target and the width (D = 64, masked
bands only), 4000 steps took 26.6 min on 2 CPU cores and probed 53.9 / 63.7 at 1/64 / 1/4
(section 1b).

The views are chosen so that matching a pixel to itself needs its land cover, not a
fingerprint (they matter for InfoNCE / VICReg / prototypes, when their weights are set).
Their crops are shifted against each other (`augment.crop_shift`; with identical crops a
CNN names a pixel by its distances to the zero-padded borders). Both views see every date,
and the positive of an anchor is another pixel of the same ground within 2 px
(`loss.positive_jitter=2`, `loss.positive_not_self`): the same pixel on the same date
would carry the same sensor noise in both views. Same-image negatives within 8 px (about a
field) are dropped. With identical crops and shared dates, validation retrieval reached
0.95 while a linear probe of the features was at chance (mIoU 8-10 on 1/64 of the labels).
Splitting the dates between the views instead (`augment.disjoint_dates`) also removes the
noise fingerprint but leaves each view half the series: probe 36 at 1/64 and 44 at 1/4 of
the labels after 1500 steps, against 36 and 50 with these views.
"""

from configs import defaults
from tfds_builders.synthetic_landcover.builder import SyntheticLandcover


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke", "demo", "wide"), "configs/pretrain_synthetic.py")
  c = defaults.get_base_config()
  c.data.name = "synthetic_landcover"
  c.data.config_name = "default"
  c.data.builder.update(SyntheticLandcover.DEFAULT_PARAMS)
  c.data.train_split = "unlabelled"
  c.data.eval_split = "validation"
  c.data.per_device_batch = 16
  c.model.temporal = "stack"
  c.model.features = 128  # wider than the input's 78 values a pixel (docs/pretraining.md, 8)
  c.augment.crop_size = 24
  c.augment.crop_shift = 8
  defaults.masked_objective(c)  # masked reconstruction (docs/pretraining.md)
  # Views for InfoNCE / VICReg / prototypes, when their weights are set:
  c.loss.positive_jitter = 2
  c.loss.positive_not_self = True
  c.loss.exclude_radius = 8.0
  c.loss.temperature = 0.2
  c.train.steps = 4000   # +1.8 / +1.1 study points over 2000 (docs/pretraining.md, section 10)
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.checkpoint_every = 500
  c.optim.warmup_steps = 30
  if arg == "smoke":
    defaults.smoke(c)
    c.augment.crop_size = 16
    c.augment.crop_shift = 4
    c.data.config_name = "smoke"
    c.data.builder.num_tiles = {"unlabelled": 64, "train": 32, "validation": 32, "test": 16}
  elif arg == "wide":  # dec0 bounds the output's 128 features: 64 channels, not 32
    c.model.widths = (64, 64, 128, 256)
    c.train.steps = 3000  # probes level with 4000 at this width, 5 min less (section 13d)
  elif arg == "demo":  # a narrower model, for `make demo` on 2 CPU cores
    c.model.widths = (16, 32, 64, 128)
    c.model.features = 32
    c.train.steps = 200
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
  return c
