"""The label-fraction study on `synthetic_landcover`: pretrained vs random initialisation.

  python launch.py --mode=study --config=configs/study_synthetic.py --workdir=W3

Pre-trains first (configs/pretrain_synthetic.py into W3/pretrain) unless
study.pretrain_workdir names an existing pre-training run; then 4 fractions x 2 inits x 5
seeds (0-4): the pretrained arm fine-tuned with `lp_ft`, the random arm with both `full` and
`lp_ft`, each random run keeping the one with the better validation mIoU
(`defaults.STUDY_CANDIDATES`, ee_jax/study.py): 40 runs, 60 fine-tunings and 20 validation
passes, plus the classical baselines on 20 (fraction, seed) tile sets. Both recipes for the pretrained arm too:
`--config.study.candidates.pretrained='("full","lp_ft")'`. Arguments: `:demo` (2 fractions,
1 seed, `lp_ft` alone, shorter runs: part of `make demo`), `:smoke` (1 seed, `lp_ft` alone).

Results of this default at 1/64 and 1/16 (5 seeds, paired, the shipped 2000-step
pre-training; docs/pretraining.md, section 9; `--config.study.fractions='(0.015625,0.0625)'`,
63 min on the 2-core AMD EPYC VM for the fine-tunings and fits, beside other jobs at first):

  fraction   pretrained   random (chosen)   paired gain   linear       LightGBM
  1/16       66.7 ± 2.5   63.4 ± 2.2        +3.2 ± 0.3    62.7 ± 2.4   64.8 ± 2.8
  1/64       55.0 ± 2.1   48.1 ± 2.2        +6.9 ± 2.7    50.9 ± 2.8   48.5 ± 5.5

Cost of the whole default (4 fractions): about 2 hours alone on that VM (section 9's
arithmetic: 60 fine-tunings of 80-110 s, 40 fits, 13 min of pre-training), about half on
the faster 2-core Xeon VM; not run as a whole. `--config.model.head_input=raw3x3` (the
head sees the input beside the features): docs/pretraining.md, section 7.

The study as shipped before (3 seeds, `lp_ft` alone for both arms), on the 2-core Intel Xeon
VM, alone: 28 min 52 s (pre-training 846 s, then 24 runs of 33-40 s; docs/perf_log.md,
2026-12-04). Test mIoU, mean ± std over 3 seeds, and the paired gain (same seed, same
labelled tiles):

  fraction   pretrained   random       paired gain
  1          74.7 ± 0.6   68.9 ± 1.4   +5.8 ± 1.9
  1/4        71.5 ± 1.3   66.9 ± 1.7   +4.6 ± 0.5
  1/16       65.5 ± 1.4   62.1 ± 3.3   +3.4 ± 2.0
  1/64       55.0 ± 1.2   47.6 ± 1.4   +7.4 ± 2.5

(the README's table; docs/pretraining.md section 3 has the first run's, on the 2-core AMD
EPYC VM, about an hour then: within 0.7 points of it; its random arm with `full` instead of
`lp_ft` was about 3 points better at fraction 1). The classical baselines
(`study.baselines`, added since) were measured alone on the same tiles (3 seeds): 12.4
CPU-minutes more; linear 69.3 / 67.8 / 62.9 / 52.5, LightGBM 75.3 / 73.1 / 65.3 / 52.2 at
1 ... 1/64 (docs/pretraining.md section 6).

`:demo` (in `make demo`, 2-core AMD EPYC VM; the whole demo 7 min 4 s, `.venv` created):
per-run test mIoU 48.23 / 38.07 / 45.28 / 39.69 (fractions 1 and 1/16, pretrained and
random, as docs/perf_log.md lists them; 48.5 / 38.1 / 45.4 / 39.9 on the 2-core Xeon VM,
2026-12-06, with LightGBM 75.5 / 66.6 and linear 69.3 / 62.9 beside them); its plot is
docs/img/label_fraction.png. With `--config.model.head_input=raw3x3`: 66.6 / 66.8 / 62.3 /
62.1 (docs/pretraining.md, section 7).
"""

from configs import defaults, finetune_synthetic


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke", "demo"), "configs/study_synthetic.py")
  c = finetune_synthetic.get_config("smoke" if arg == "smoke" else None)
  fractions, seeds = {None: ((1.0, 1 / 4, 1 / 16, 1 / 64), (0, 1, 2, 3, 4)),
                      "smoke": ((1.0, 1 / 4), (0,)),
                      "demo": ((1.0, 1 / 16), (0,))}[arg]  # demo: part of `make demo`
  defaults.add_study(c, pretrain_config="configs/pretrain_synthetic.py", pretrain_arg=arg or "",
                     fractions=fractions, seeds=seeds, smoke=arg == "smoke",
                     # :demo and :smoke: one fine-tuning a run, as before (cheap)
                     candidates=defaults.CHEAP_CANDIDATES if arg else None)
  if arg == "demo":  # shorter runs
    c.train.steps = 200
  return c
