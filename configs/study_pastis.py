"""The label-fraction study on PASTIS (France), on one official fold.

  python launch.py --mode=study --config=configs/study_pastis.py:fold3 --workdir=W \\
    --config.data.builder.manual_dir=/data/PASTIS

`:fold1` .. `:fold5` (no argument: fold 1) pick the official train/validation/test folds;
each fold is its own dataset (config_name fold<k>). Pre-trains on the fold's train split
first (`:pretrain`, same file). `:smoke` is a tiny run for the tests' fixture.

Produced: not yet run on real data (only on the tests' small fixtures in the dataset's
layout). See configs/_benchmark.py.
"""

from configs import defaults
from configs._benchmark import VARIANTS, benchmark_config

_PATH = "configs/study_pastis.py"
_FOLDS = {f"fold{k}": k for k in range(1, 6)}


def get_config(arg: str | None = None):
  arg = defaults.parse_arg(arg, VARIANTS[1:], _PATH, also=(_FOLDS.__contains__, "fold1..fold5"))
  variant, fold = (None, _FOLDS[arg]) if arg in _FOLDS else (arg, 1)
  return benchmark_config(path=_PATH, dataset="pastis",
                          config_name=f"fold{fold}", builder={"fold": fold}, variant=variant,
                          crop_size=64, per_device_batch=4)
