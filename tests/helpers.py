"""Plain helpers shared by several test modules (test modules never import one another).

Fixtures live in tests/conftest.py; rasters written for the builders in tests/rasters.py.
"""

import pathlib

import ml_collections

from ee_jax.geo.bands import S2_L2A_BANDS

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# ---------------------------------------------------------------------------------------
# Dataset configs for builds on small rasters written by the tests.
# ---------------------------------------------------------------------------------------

BANDS = list(S2_L2A_BANDS)


def data_cfg(tmp_path, name="s2_tiles", config_name="t", **builder):
  """`config.data` of a build under tmp_path/tfds with builder parameters `builder`."""
  return ml_collections.ConfigDict(dict(
      name=name, config_name=config_name, data_dir=str(tmp_path / "tfds"),
      builder=ml_collections.ConfigDict(builder)))


def s2_cfg(tmp_path, products, **kw):
  """An s2_tiles build of `products` (folders or GeoTIFFs) in 32 px tiles, one a block."""
  params = dict(source="manual", products=products, bands=BANDS, tile_size=32, stride=32,
                block_tiles=1)
  params.update(kw)
  return data_cfg(tmp_path, **params)


# ---------------------------------------------------------------------------------------
# Fine-tuning and the study: configs on a tiny labelled synthetic dataset (a pre-training
# on it, fine-tuning runs and smoke studies; fixtures in tests/conftest.py).
# ---------------------------------------------------------------------------------------

TINY_LABELLED = dict(num_tiles={"unlabelled": 64, "train": 32, "validation": 16, "test": 20},
                     tile_size=16, scene_size=32, num_dates=2, num_bands=4)


def tiny_labelled_pretrain_config(data_dir, steps=4):
  """A few pre-training steps of the smoke model on the tiny labelled dataset."""
  from configs import pretrain_synthetic  # pylint: disable=import-outside-toplevel
  c = pretrain_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny_labelled"
  c.data.builder.update(TINY_LABELLED)
  c.data.per_device_batch = 4
  c.augment.crop_size = 12
  c.train.steps = steps
  c.train.update(eval_every=0, checkpoint_every=steps)
  return c


def tiny_finetune_config(data_dir, steps=6, **finetune_fields):
  """A few fine-tuning steps on the tiny labelled dataset; `finetune_fields` on top."""
  from configs import finetune_synthetic  # pylint: disable=import-outside-toplevel
  c = finetune_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny_labelled"
  c.data.builder.update(TINY_LABELLED)
  c.data.per_device_batch = 4
  c.train.steps = steps
  c.train.eval_every = 0
  c.train.checkpoint_every = steps
  c.finetune.update(finetune_fields)
  return c


def tiny_study_config(data_dir):
  """The smoke study on the tiny labelled dataset: 2 steps a run, LP-FT's head 1 of them."""
  from configs import defaults, study_synthetic  # pylint: disable=import-outside-toplevel
  c = study_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny_labelled"
  c.data.builder.update(TINY_LABELLED)
  c.data.per_device_batch = 4
  c.train.steps = 2
  defaults.smoke_study(c)
  return c
