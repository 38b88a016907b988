"""The label-fraction study on PASTIS (France), on one official fold.

  python launch.py --mode=study --config=configs/study_pastis.py:fold3 --workdir=W \\
    --config.data.builder.manual_dir=/data/PASTIS

`:fold1` .. `:fold5` (no argument: fold 1) pick the official train/validation/test folds;
each fold is its own dataset (config_name fold<k>). Pre-trains on the fold's train split
first (`:pretrain`, same file). `:smoke` is a tiny run for the tests' fixture. See
configs/_benchmark.py.
"""

from configs._benchmark import benchmark_config

_FOLDS = {f"fold{k}": k for k in range(1, 6)}


def get_config(arg: str | None = None):
  variant, fold = arg, 1
  if arg in _FOLDS:
    variant, fold = None, _FOLDS[arg]
  elif arg is not None and arg not in ("smoke", "pretrain", "pretrain_smoke"):
    raise ValueError(f"configs/study_pastis.py: unknown argument '{arg}' "
                     f"(known: fold1..fold5, smoke, pretrain, pretrain_smoke)")
  return benchmark_config(path="configs/study_pastis.py", dataset="pastis",
                          config_name=f"fold{fold}", builder={"fold": fold}, variant=variant,
                          crop_size=64, per_device_batch=4)
