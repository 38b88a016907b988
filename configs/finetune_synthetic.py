"""Segmentation fine-tuning on the labelled splits of `synthetic_landcover`.

  python launch.py --mode=finetune --config=configs/finetune_synthetic.py --workdir=W2 \\
    --config.init.checkpoint=W        # a pre-training workdir; '' (default) = random init

The dataset is the same as configs/pretrain_synthetic.py's (same builder parameters), so
a pre-training run on its unlabelled split initialises this one.
"""

from configs import defaults, pretrain_synthetic


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"configs/finetune_synthetic.py: unknown argument '{arg}' (known: smoke)")
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
