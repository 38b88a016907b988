"""Plain helpers shared by several test modules (test modules never import one another).

Fixtures live in tests/conftest.py; rasters written for the builders in tests/rasters.py.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import rasterio

from ee_jax import checkpoints, models
from ee_jax.geo.bands import S2_L2A_BANDS
from tests import rasters

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


# ---------------------------------------------------------------------------------------
# Models: tiny configs and generic weights.
# ---------------------------------------------------------------------------------------

def tiny(**kw):
  cfg = models.default_config()
  cfg.widths, cfg.features, cfg.proj_dim = (8, 16), 16, 16
  cfg.update(kw)
  return cfg


def rand_params(model, shape, seed=0):
  """Random params without running the initialisers: their threefry code is slow to
  compile on CPU, and these tests only need generic weights."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), shape))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


# ---------------------------------------------------------------------------------------
# Scene inference: tiny checkpoints in the layout of ee_jax.checkpoints, scenes written
# with rasterio.
# ---------------------------------------------------------------------------------------

SCENE_BANDS = ["B02", "B03", "B04", "B08"]        # 10 m bands: product and stacked files agree exactly
MEAN = [1000.0, 1100.0, 1200.0, 2000.0]
STD = [300.0, 350.0, 400.0, 600.0]
CLASSES = ["water", "forest", "crop"]
TILE = 32


def tiny_model_config(temporal="stack"):
  c = models.default_config()
  c.widths = (8, 16)
  c.features = 8
  c.num_groups = 4
  c.proj_dim = 8
  c.temporal = temporal
  return c


def save_checkpoint(workdir, kind="finetune", num_dates=1, temporal="stack", seed=0,
                    head_input="", **meta_over):
  """A checkpoint in the layout Checkpointer.save writes (state: step, params, opt_state)."""
  cfg = tiny_model_config(temporal)
  cfg.head_input = head_input
  key = jax.random.PRNGKey(seed)
  shape = (1, num_dates, TILE, TILE, len(SCENE_BANDS))
  if kind == "finetune":
    model = models.build_segmentation_model(cfg, len(CLASSES))
  else:
    model = models.build_pretrain_model(cfg)
  params = models.init_params(model, key, shape, with_valid=True)
  meta = {"kind": kind, "bands": SCENE_BANDS, "mean": MEAN, "std": STD, "num_dates": num_dates,
          "tile_size": TILE, "gsd": 10.0, "offsets_removed": {}, "resampling": "bilinear",
          "model": cfg.to_dict(), "config": {"data": {"builder": {}}}}
  if kind == "finetune":
    meta.update(num_classes=len(CLASSES), class_names=CLASSES, ignore_index=255)
  meta.update(meta_over)
  ckpt = checkpoints.Checkpointer(str(workdir))
  ckpt.save(1, {"step": 1, "params": params, "opt_state": {}}, meta, wait=True)
  ckpt.close()
  return str(workdir)


def field_scene(h, w, seed=0):
  """uint16 [h, w, C]: blocky 'fields' with distinct spectra plus noise."""
  rng = np.random.default_rng(seed)
  fields = rng.integers(0, 4, (h // 8 + 1, w // 8 + 1))
  fields = np.kron(fields, np.ones((8, 8), int))[:h, :w]
  spectra = rng.uniform(500, 3000, (4, len(SCENE_BANDS)))
  img = spectra[fields] + rng.normal(0, 80, (h, w, len(SCENE_BANDS)))
  return np.clip(img, 1, 65535).astype(np.uint16)


def write_product(folder, image, origin=rasters.ORIGIN):
  """A product folder: one 10 m GeoTIFF per band (nodata 0)."""
  os.makedirs(folder, exist_ok=True)
  for i, b in enumerate(SCENE_BANDS):
    rasters.write_raster(os.path.join(folder, f"{b}.tif"), image[..., i], 10, origin=origin,
                         nodata=0)
  return str(folder)


def write_stack(path, image, names=SCENE_BANDS, descriptions=True):
  """A multi-band GeoTIFF with band descriptions."""
  rasters.write_raster(path, np.moveaxis(image, -1, 0), 10, nodata=0)
  if descriptions:
    with rasterio.open(path, "r+") as ds:
      for i, b in enumerate(names):
        ds.set_band_description(i + 1, b)
  return str(path)


def read(path, **kw):
  with rasterio.open(path) as ds:
    return ds.read(**kw)


FAST = dict(tile_size=TILE, overlap=0.25, per_device_batch=2, progress=False)
