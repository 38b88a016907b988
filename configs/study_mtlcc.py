"""The label-fraction study on MTLCC (Bavaria, 2016 and 2017), 240 m tiles, fold 0.

  python launch.py --mode=study --config=configs/study_mtlcc.py --workdir=W \\
    --config.data.builder.manual_dir=/data/mtlcc   # the folder holding data_IJGI18/

Whole 24 px tiles (no crop); both years in every split. `:smoke` is tiny; `:pretrain` is
the pre-training the study runs first.

Produced: not yet run on real data (only on the tests' small fixtures in the dataset's
layout). See configs/_benchmark.py.
"""

from configs._benchmark import benchmark_config


def get_config(arg: str | None = None):
  return benchmark_config(path="configs/study_mtlcc.py", dataset="mtlcc",
                          config_name="fold0_240", builder={"fold": 0, "size": 240},
                          variant=arg, crop_size=0, per_device_batch=16)
