"""The label-fraction study on Ghana (groundnut, maize, rice, soya bean), Rustowicz et al. 2019.

  python launch.py --mode=study --config=configs/study_ghana.py --workdir=W \\
    --config.data.builder.manual_dir=/data/crop_type_mapping   # holds ghana/

The official partitions (list_eval_partition.csv) give train/validation/test. `:smoke`
is tiny; `:pretrain` is the pre-training the study runs first.

Produced: not yet run on real data (only on the tests' small fixtures in the dataset's
layout). See configs/_benchmark.py.
"""

from configs._benchmark import benchmark_config


def get_config(arg: str | None = None):
  return benchmark_config(path="configs/study_ghana.py", dataset="sustainbench_crops",
                          config_name="ghana", builder={"country": "ghana"},
                          variant=arg, crop_size=48, per_device_batch=8)
