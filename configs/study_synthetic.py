"""The label-fraction study on `synthetic_landcover`: pretrained vs random initialisation.

  python launch.py --mode=study --config=configs/study_synthetic.py --workdir=W3

Pre-trains first (configs/pretrain_synthetic.py:wide into W3/pretrain: the full-resolution
level twice as wide, 3000 steps) unless study.pretrain_workdir names an existing
pre-training run; both arms fine-tune that architecture, 200 steps a run. Then the two
scarce fractions 1/16 and 1/64 x 2 inits x 5 seeds (0-4). Each run tries its arm's recipes
and keeps the one with the better validation mIoU (`defaults.STUDY_CANDIDATES`,
ee_jax/study.py): the pretrained arm `lp_ft` and `frozen_input` (backbone frozen, a linear
head on its features beside the input and its 3x3 mean), the random arm those and `full`:
20 runs, 50 fine-tunings (20 of them head-only), plus the classical baselines (linear,
LightGBM) on the 10 (fraction, seed) tile sets, and LightGBM again with the pre-trained
embedding beside the pixels (`study.embedding_baselines`). More fractions:
`--config.study.fractions='(1.0,0.25,0.0625,0.015625)'`. Arguments: `:demo` (fractions 1
and 1/16, 1 seed, `lp_ft` alone, no embedding row, the narrow `:demo` pre-training: part of
`make demo`), `:smoke` (1 seed, `lp_ft` alone, no embedding row), `:narrow` (the study as
shipped before section 14: the default pre-training's width and 4000 steps, 300
fine-tuning steps a run; sections 10-12).

Why these two fractions by default: they are where pre-training has to pay (issue #30's
criteria), and 5 paired seeds of 4 fractions cost over 2 hours on a 2-core VM, beyond the
75-minute budget of the default study (docs/pretraining.md, section 10). Why the wide
backbone with fewer steps: the fine-tuned pretrained UNet leads further with it (section
13), and the shorter schedules bring it back to the budget (section 14). What it shows as
shipped, its cost alone and on which pre-training seeds: the README's Results and
docs/pretraining.md, section 14.
"""

from configs import defaults, finetune_synthetic


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke", "demo", "narrow"), "configs/study_synthetic.py")
  c = finetune_synthetic.get_config("smoke" if arg == "smoke" else None)
  cheap = arg in ("smoke", "demo")
  fractions, seeds = {"smoke": ((1.0, 1 / 4), (0,)),
                      "demo": ((1.0, 1 / 16), (0,))  # part of `make demo`
                      }.get(arg, ((1 / 16, 1 / 64), (0, 1, 2, 3, 4)))  # scarce: section 10
  # The pre-training's argument: the wide backbone by default (section 14), the shipped
  # width with `:narrow`.
  pretrain_arg = {None: "wide", "narrow": ""}.get(arg, arg)
  defaults.add_study(c, pretrain_config="configs/pretrain_synthetic.py",
                     pretrain_arg=pretrain_arg,
                     fractions=fractions, seeds=seeds, smoke=arg == "smoke",
                     # :demo and :smoke: one fine-tuning a run, as before (cheap)
                     candidates=defaults.CHEAP_CANDIDATES if cheap else None,
                     embedding_baselines=() if cheap else None)
  if arg in (None, "demo"):  # 200 steps a run: the default within the budget (section 14)
    c.train.steps = 200
  return c
