"""The label-fraction study on `synthetic_landcover`: pretrained vs random initialisation.

  python launch.py --mode=study --config=configs/study_synthetic.py --workdir=W3

Pre-trains first (configs/pretrain_synthetic.py into W3/pretrain) unless
study.pretrain_workdir names an existing pre-training run; then 4 fractions x 2 inits x 3
seeds, recipe `lp_ft`. With several `candidates` among the fine-tuning `recipes`, each run
keeps the one with the best validation mIoU (ee_jax/study.py). Arguments: `:demo` (2
fractions, 1 seed, shorter runs: part of `make demo`), `:smoke`.

Produced, as shipped, on the 2-core Intel Xeon VM, alone: 28 min 52 s (pre-training 846 s,
then 24 runs of 33-40 s; docs/perf_log.md, 2026-12-04). Test mIoU, mean ± std over 3
seeds, and the paired gain (same seed, same labelled tiles):

  fraction   pretrained   random       paired gain
  1          74.7 ± 0.6   68.9 ± 1.4   +5.8 ± 1.9
  1/4        71.5 ± 1.3   66.9 ± 1.7   +4.6 ± 0.5
  1/16       65.5 ± 1.4   62.1 ± 3.3   +3.4 ± 2.0
  1/64       55.0 ± 1.2   47.6 ± 1.4   +7.4 ± 2.5

(the README's table; docs/pretraining.md section 3 has the first run's, on the 2-core AMD
EPYC VM, about an hour then: within 0.7 points of it). The classical baselines
(`study.baselines`, added since) were measured alone on the same tiles: 12.4 CPU-minutes
more; linear 69.3 / 67.8 / 62.9 / 52.5, LightGBM 75.3 / 73.1 / 65.3 / 52.2 at 1 ... 1/64
(docs/pretraining.md section 6).

`:demo` (in `make demo`, 2-core AMD EPYC VM; the whole demo 7 min 4 s, `.venv` created):
per-run test mIoU 48.23 / 38.07 / 45.28 / 39.69 (fractions 1 and 1/16, pretrained and
random, as docs/perf_log.md lists them; 48.5 / 38.1 / 45.4 / 39.9 on the 2-core Xeon VM,
2026-12-06, with LightGBM 75.5 / 66.6 and linear 69.3 / 62.9 beside them); its plot is
docs/img/label_fraction.png.
"""

from configs import defaults, finetune_synthetic


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, ("smoke", "demo"), "configs/study_synthetic.py")
  c = finetune_synthetic.get_config("smoke" if arg == "smoke" else None)
  fractions, seeds = {None: ((1.0, 1 / 4, 1 / 16, 1 / 64), (0, 1, 2)),
                      "smoke": ((1.0, 1 / 4), (0,)),
                      "demo": ((1.0, 1 / 16), (0,))}[arg]  # demo: part of `make demo`
  defaults.add_study(c, pretrain_config="configs/pretrain_synthetic.py", pretrain_arg=arg or "",
                     fractions=fractions, seeds=seeds, smoke=arg == "smoke")
  if arg == "demo":  # shorter runs
    c.train.steps = 200
  return c
