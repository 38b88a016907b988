"""The label-fraction study on T31TFM_1618 (France, S2 tile 31TFM, 2016-2018).

  python launch.py --mode=study --config=configs/study_t31tfm.py --workdir=W \\
    --config.data.builder.manual_dir=/data/T31TFM_1618

Splits from paths/{train,eval,test}_paths.csv, classes from classes.txt (see
tfds_builders/t31tfm). Whole tiles (no crop). `:smoke` is tiny; `:pretrain` is the
pre-training the study runs first.

Produced: not yet run on real data (only on the tests' small fixtures in the dataset's
layout). See configs/_benchmark.py.
"""

from configs._benchmark import benchmark_config


def get_config(arg: str | None = None):
  return benchmark_config(path="configs/study_t31tfm.py", dataset="t31tfm",
                          config_name="default", builder={}, variant=arg, crop_size=0,
                          per_device_batch=8)
