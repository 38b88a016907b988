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

Cost and results of this default (5 seeds, random's recipe chosen per run, the pre-training
with D = 128 and the spectral-shape target): not yet measured as a whole. From the
pre-training's step-2000 checkpoint, 3 seeds, fractions 1/64 and 1/16 (docs/pretraining.md,
section 8c; 42 min 52 s beside other jobs): pretrained 57.7 / 66.4, random 49.5 / 63.3,
linear 52.5 / 62.9, LightGBM 52.2 / 65.3. The table below is the study as shipped before. `--config.model.head_input=raw3x3` (the head sees the input beside
the features): docs/pretraining.md, section 7.

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
