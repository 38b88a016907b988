"""Segmentation fine-tuning on the labelled splits of `synthetic_landcover`.

  python launch.py --mode=finetune --config=configs/finetune_synthetic.py --workdir=W2 \\
    --config.init.checkpoint=W        # a pre-training workdir; '' (default) = random init

The dataset is the same as configs/pretrain_synthetic.py's (same builder parameters), so
a pre-training run on its unlabelled split initialises this one. Argument `:smoke`.

Produced, as shipped (random init, all 512 labelled tiles, 300 steps of every weight): test
mIoU 71.9 ± 1.8 over 3 seeds (the study's "random (full)" runs, docs/pretraining.md,
section 3). With LP-FT (`--config.finetune.linear_probe_steps=100
--config.train.eval_every=0`): 93.5 s wall on the 2-core AMD EPYC VM, test mIoU 67.49
(docs/perf_log.md).
"""

from configs import defaults, pretrain_synthetic


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke",), "configs/finetune_synthetic.py")
  c = pretrain_synthetic.get_config(arg)  # same data and model
  defaults.add_finetune(c)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.per_device_batch = 16
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 20
  c.train.steps = 300
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  if arg == "smoke":
    defaults.smoke(c)
  return c
