"""The Python API (ee_jax/api.py): a checkpoint's backbone in a user's own code.

Tiny checkpoints in the layout training writes (tests/helpers.save_checkpoint), and one
real pre-training of a few steps (the `pretrained` fixture of tests/conftest.py).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest
import rasterio

import ee_jax
from ee_jax import checkpoints, inference, models
from ee_jax.errors import ConfigError, DataError
from tests.helpers import (FAST, MEAN, REPO, SCENE_BANDS, STD, TILE, field_scene,
                           save_checkpoint, write_product)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return save_checkpoint(tmp_path_factory.mktemp("pre"), kind="pretrain")


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_pretrained_gives_the_checkpoints_backbone(pretrained):
  params, meta = checkpoints.load_params(pretrained)
  pre = ee_jax.load_pretrained(pretrained)
  _assert_trees_equal(pre.params, params[models.BACKBONE])
  assert pre.bands == tuple(meta["bands"]) and len(pre.bands) == 4
  np.testing.assert_allclose(pre.mean, meta["mean"])
  np.testing.assert_allclose(pre.std, meta["std"])
  assert pre.num_dates == 2 and pre.features == meta["model"]["features"]   # 'stack'
  directory, step = checkpoints.resolve_checkpoint(pretrained)
  again = ee_jax.load_pretrained(directory / str(step))          # a step folder works too
  assert again.step == pre.step == step
  _assert_trees_equal(again.params, pre.params)
  image = np.random.default_rng(0).integers(1, 3000, (2, 16, 16, 4)).astype(np.uint16)
  x, weight = pre.preprocess(image)
  assert x.shape == (1, 2, 16, 16, 4) and weight.shape == (1, 2, 16, 16)
  assert pre(x, weight).shape == (1, 16, 16, pre.features)
  with pytest.raises(DataError, match="stacks 2 date"):
    pre.preprocess(image[:1])
  with pytest.raises(ConfigError, match="no path given"):
    ee_jax.load_pretrained("")
  with pytest.raises(DataError, match="no such checkpoint"):
    ee_jax.load_pretrained(os.path.join(pretrained, "nothing_here"))


def test_preprocess_normalises_and_masks_like_scene_inference(ckpt):
  pre = ee_jax.load_pretrained(ckpt)
  assert pre.num_dates == 1 and pre.bands == tuple(SCENE_BANDS)
  rng = np.random.default_rng(1)
  image = rng.integers(1, 4000, (12, 10, 4)).astype(np.uint16)
  image[0, 0, 2] = 0                                   # one band at nodata: pixel unobserved
  valid = np.ones((12, 10), bool)
  valid[3, 4] = False                                  # e.g. a cloud
  x, weight = pre.preprocess(image, valid)
  want = (image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
  seen = valid.copy()
  seen[0, 0] = False
  want[~seen] = 0.0
  np.testing.assert_allclose(np.asarray(x)[0, 0], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(weight)[0, 0], seen.astype(np.float32))
  # [T, H, W, C] with T = 1 is the same; NaN in a float array is unobserved.
  x4, _ = pre.preprocess(image[None], valid[None])
  np.testing.assert_array_equal(np.asarray(x4), np.asarray(x))
  floats = image.astype(np.float32)
  floats[5, 5, 1] = np.nan
  _, w = pre.preprocess(floats)
  assert np.asarray(w)[0, 0, 5, 5] == 0 and np.asarray(w)[0, 0, 3, 4] == 1
  with pytest.raises(DataError, match=r"valid: shape \(3, 3\)"):
    pre.preprocess(image, np.ones((3, 3), bool))


def test_embed_equals_the_backbone_by_hand_and_the_embed_mode(ckpt, tmp_path):
  pre = ee_jax.load_pretrained(ckpt)
  image = field_scene(TILE, TILE, seed=3)
  image[:2, :3] = 0                                    # nodata: NaN out
  emb = ee_jax.embed(image, pre, tile_size=TILE, overlap=0.0)   # one tile, no border pad
  by_hand = np.asarray(pre(*pre.preprocess(image)))[0]
  assert emb.shape == (TILE, TILE, pre.features)
  assert np.isnan(emb[:2, :3]).all() and not np.isnan(emb[2:]).any()
  ok = ~np.isnan(emb[..., 0])
  np.testing.assert_allclose(emb[ok], by_hand[ok], rtol=1e-5, atol=1e-5)
  # Tiled and blended, an array gives what --mode=embed writes for the same pixels in a
  # file (there stored as float16); a path works as the model too.
  image = field_scene(45, 38, seed=4)
  scene = write_product(tmp_path / "scene", image)
  inference.embed_scene(ckpt, scene, str(tmp_path / "emb.tif"), kmeans_k=2, **FAST)
  with rasterio.open(tmp_path / "emb.tif") as ds:
    written = np.moveaxis(ds.read(), 0, -1)
  emb = ee_jax.embed(image, ckpt, tile_size=TILE, overlap=FAST["overlap"],
                     batch=FAST["per_device_batch"])
  np.testing.assert_allclose(emb, written, rtol=2e-3, atol=2e-3)


def test_bands_are_reordered_or_named_when_missing(ckpt):
  pre = ee_jax.load_pretrained(ckpt)
  image = field_scene(TILE, TILE, seed=5)
  order = [2, 0, 3, 1]
  names = [SCENE_BANDS[i] for i in order]
  want = ee_jax.embed(image, pre, tile_size=TILE, overlap=0.0)
  got = ee_jax.embed(image[..., order], pre, bands=names, tile_size=TILE, overlap=0.0)
  np.testing.assert_array_equal(got, want)
  # Extra bands are dropped.
  extra = np.concatenate([image, image[..., :1]], axis=-1)
  x, _ = pre.preprocess(extra, bands=SCENE_BANDS + ["B11"])
  np.testing.assert_array_equal(np.asarray(x), np.asarray(pre.preprocess(image)[0]))
  with pytest.raises(DataError, match=r"lacks B08, which the model") as e:
    pre.preprocess(image[..., :3], bands=SCENE_BANDS[:3])
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match="3 channels, but the model .* takes 4 bands"):
    pre.preprocess(image[..., :3])
  with pytest.raises(DataError, match="3 names"):
    pre.preprocess(image, bands=SCENE_BANDS[:3])
  with pytest.raises(DataError, match=r"expected \[T, H, W, C\]"):
    pre.preprocess(image[..., 0])


def test_example_finetunes_its_own_model_and_the_loss_falls(pretrained, capsys):
  spec = importlib.util.spec_from_file_location(
      "finetune_own_model", os.path.join(REPO, "examples", "finetune_own_model.py"))
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  losses = example.main(pretrained, steps=8, size=16)
  assert len(losses) == 8 and np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0]
  assert "step 7: loss" in capsys.readouterr().out


def test_importing_the_package_loads_no_jax():
  """launch.py configures the CPU devices before JAX starts: `import ee_jax` must not start it."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("import sys, ee_jax; assert 'jax' not in sys.modules, 'jax imported'; "
          "assert callable(ee_jax.load_pretrained) and callable(ee_jax.embed); "
          "assert 'jax' in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_readme_snippet_runs(ckpt):
  """The README's first Python block, on a tiny checkpoint in place of the demo's."""
  text = (REPO / "README.md").read_text()
  start = text.index("## Use a pre-trained backbone in your own code")
  block = text[text.index("```python\n", start) + 10:]
  block = block[:block.index("```")]
  assert 'load_pretrained("workdirs/demo/pretrain_s2")' in block
  scope = {}
  exec(block.replace("workdirs/demo/pretrain_s2", ckpt), scope)  # pylint: disable=exec-used
  assert scope["features"].shape == (1, 64, 64, 8) and scope["emb"].shape == (64, 64, 8)
  assert np.isfinite(scope["emb"]).all()        # no band at 0: every pixel observed
