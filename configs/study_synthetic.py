"""The label-fraction study on `synthetic_landcover`: pretrained vs random initialisation.

  python launch.py --mode=study --config=configs/study_synthetic.py --workdir=W3

Pre-trains first (configs/pretrain_synthetic.py into W3/pretrain) unless
study.pretrain_workdir names an existing pre-training run. With several `candidates` among
the fine-tuning `recipes`, each run keeps the one with the best validation mIoU
(ee_jax/study.py).
"""

from configs import defaults, finetune_synthetic


def get_config(arg: str | None = None):
  if arg not in (None, "smoke", "demo"):
    raise ValueError(f"configs/study_synthetic.py: unknown argument '{arg}' "
                     f"(known: smoke, demo)")
  c = finetune_synthetic.get_config("smoke" if arg == "smoke" else None)
  c.study = dict(
      fractions=(1.0, 1 / 4, 1 / 16, 1 / 64),
      inits=("pretrained", "random"),
      seeds=(0, 1, 2),
      pretrain_config="configs/pretrain_synthetic.py",
      pretrain_arg=arg or "",
      pretrain_workdir="",
      # Fine-tuning recipes: name -> overrides {section: {key: value}} of this config.
      recipes=defaults.study_recipes(),
      # Recipes tried per run; with several, each run keeps the best on `select_split`.
      candidates=defaults.STUDY_CANDIDATES,
      select_split="validation",
      # The runs of one fraction and recipe train as one compiled step ('auto': on
      # GPU/TPU, run by run on CPU where it measured slower; 'always'; 'never');
      # vmap_width: runs vectorised at a time (0 = all).
      train_together="auto",
      vmap_width=0,
  )
  c.train.eval_every = 0  # no validation passes inside study runs: only the final test
  if arg == "smoke":
    c.study.fractions = (1.0, 1 / 4)
    defaults.smoke_study(c)
    c.study.seeds = (0,)
  if arg == "demo":  # 2 fractions, 1 seed, shorter runs: part of `make demo`
    c.study.fractions = (1.0, 1 / 16)
    c.study.seeds = (0,)
    c.train.steps = 200
  return c
