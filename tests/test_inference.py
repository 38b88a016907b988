"""Scene inference: whole scenes in, georeferenced rasters out (issue 5).

Tiny models saved in the checkpoint layout of `ee_jax.checkpoints`, tiny scenes written
with rasterio; inference depends only on `checkpoints.load_params` and the metadata.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import rasterio

from ee_jax import augment, checkpoints, models
from ee_jax.errors import ConfigError, DataError
from ee_jax import inference
from ee_jax.inference import blending, cluster, engine, source
from tests import rasters
from tests.helpers import (CLASSES, FAST, TILE, field_scene, read,
                           save_checkpoint, write_product, write_stack)
from tests.helpers import SCENE_BANDS as BANDS

@pytest.fixture(scope="module")
def ft_ckpt(tmp_path_factory):
  return save_checkpoint(tmp_path_factory.mktemp("ft"))


@pytest.fixture(scope="module")
def pre_ckpt(tmp_path_factory):
  return save_checkpoint(tmp_path_factory.mktemp("pre"), kind="pretrain")


# ----------------------------------------------------------------------------- tiling
def test_tile_origins_cover_every_pixel_with_full_tiles():
  for length in (5, 32, 33, 64, 100, 129):
    origins = blending.tile_origins(length, 32, 24)
    size = min(32, length)
    covered = np.zeros(length, int)
    for o in origins:
      assert 0 <= o and o + size <= length
      covered[o:o + size] += 1
    assert covered.min() >= 1
    assert origins == sorted(set(origins))


def test_window_ramps_sum_to_one_over_regular_overlaps():
  for n, o in ((32, 8), (32, 16), (64, 7), (10, 1)):
    w = blending.ramp(n, o)
    assert w.max() == 1.0 and (w[o // 2:n - o // 2] > 0).all()   # > 0 past the mirrored pad
    np.testing.assert_array_equal(w[:o // 4], 0.0)
    np.testing.assert_allclose(w[-o:] + w[:o], 1.0, atol=1e-12)
    np.testing.assert_array_equal(w[o:-o], 1.0)
  np.testing.assert_array_equal(blending.ramp(32, 0), 1.0)


def test_layout_mirrors_the_scene_border():
  layout = blending.TileLayout(40, 50, 32, 8)
  assert layout.pad == 4 and layout.rows == [0, 16] and layout.cols == [0, 24, 26]
  np.testing.assert_array_equal(layout.rows_of(0)[:6], [4, 3, 2, 1, 0, 1])
  np.testing.assert_array_equal(layout.cols_of(26)[-5:], [49, 48, 47, 46, 45])
  assert layout.crop(0, 0) == (0, 0, slice(4, 32), slice(4, 32))
  assert layout.crop(16, 26) == (12, 22, slice(0, 28), slice(0, 28))
  assert layout.segment_rows == [0, 12, 28]
  assert blending.TileLayout(40, 50, 32, 0).pad == 0


def test_blender_reproduces_a_constant_output():
  layout = blending.TileLayout(70, 90, 32, 8)
  blender = blending.RowBlender(layout.segment_rows, 70, 90, 2)
  blender.put_valid(0, np.ones((70, 90), bool))
  value = np.array([0.25, 0.75], np.float32)
  for r, c in layout.origins:
    r0, c0, rs, cs = layout.crop(r, c)
    blender.add(r0, c0, (layout.window[..., None] * value)[rs, cs], layout.window[rs, cs])
  segments = list(blender.pop(70))
  assert [s[0] for s in segments] == layout.segment_rows
  out = np.concatenate([s[1] for s in segments])
  assert out.shape == (70, 90, 2)
  np.testing.assert_allclose(out, np.broadcast_to(value, out.shape), rtol=1e-6)


# ------------------------------------------------------------------------- predictions
def test_output_grid_equals_input_grid_and_cog_layout(tmp_path, ft_ckpt):
  h, w = 600, 530   # not multiples of the tile size; > 512 so the COG has overviews
  scene = write_product(tmp_path / "S2A_T33_20210601T100000", field_scene(h, w))
  out = tmp_path / "out" / "map.tif"
  summary = inference.predict_scene(ft_ckpt, scene, str(out), probabilities=True, **FAST)
  with rasterio.open(os.path.join(scene, "B02.tif")) as src, rasterio.open(out) as ds:
    assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, w, h)
    assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == 255
    assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
    assert ds.overviews(1), "internal overviews"
    assert json.loads(ds.tags()["EE_CLASS_NAMES"]) == CLASSES
    assert [ds.tags()[f"CLASS_{i}"] for i in range(3)] == CLASSES
    assert ds.descriptions == ("class",)
    cmap = ds.colormap(1)
    assert len({cmap[i] for i in range(3)}) == 3 and cmap[255][3] == 0
    classes = ds.read(1)
  assert set(np.unique(classes)) <= {0, 1, 2}
  prob_path = str(out).replace("map.tif", "map_prob.tif")
  assert summary.outputs == {"class_map": str(out), "probabilities": prob_path}
  with rasterio.open(prob_path) as ds:
    assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, w, h)
    assert ds.count == 3 and ds.descriptions == tuple(CLASSES)
    assert ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"   # stored as float16
    probs = ds.read()
  np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=3e-3)
  np.testing.assert_array_equal(probs.argmax(axis=0)[probs.max(0) - np.sort(probs, 0)[-2] > 2e-3],
                                classes[probs.max(0) - np.sort(probs, 0)[-2] > 2e-3])
  assert summary.pixels == h * w and summary.valid_pixels == h * w
  # Nothing but the outputs is left in the output folder.
  assert sorted(os.listdir(out.parent)) == ["map.tif", "map_prob.tif"]


def _tilewise(ckpt, tiles):
  """Class probabilities of each tile [N, h, w, C] run through the model on its own."""
  params, meta = checkpoints.load_params(ckpt)
  model = models.build_segmentation_model(ml_collections.ConfigDict(meta["model"]),
                                          len(meta["class_names"]))
  x = augment.normalize(jnp.asarray(tiles)[:, None], meta["mean"], meta["std"])
  valid = jnp.ones(x.shape[:4], jnp.float32)
  return np.asarray(jax.nn.softmax(model.apply({"params": params}, x, valid), axis=-1))


def blended_probabilities(ckpt, path, **opts):
  import dataclasses  # pylint: disable=import-outside-toplevel
  loaded = engine.load_model(ckpt, "predict")
  o = dataclasses.replace(inference.Options.resolve(None, loaded.meta), **{**FAST, **opts})
  scene = source.open_scene(path, loaded.meta, o)
  g = scene.grid
  layout = blending.TileLayout(g.height, g.width, o.tile_size, o.overlap_px)
  runner = engine.TileRunner(loaded, layout.window, o.per_device_batch)
  out = np.full((g.height, g.width, loaded.channels), np.nan, np.float32)
  seen = []

  def sink(first, rows, valid):
    seen.append((first, len(rows)))
    out[first:first + len(rows)] = rows

  with source.RowBuffer(scene, BANDS, "bilinear") as buf:
    engine.blend_scene(buf, layout, runner, loaded.channels, "any", sink)
  assert sum(n for _, n in seen) == g.height and seen[0][0] == 0
  return out, layout


def test_scene_of_known_tiles_predicts_like_the_tiles(tmp_path, ft_ckpt):
  rng = np.random.default_rng(3)
  # No overlap: a scene assembled from 3 x 2 known tiles gives each tile's own prediction.
  tiles = np.stack([field_scene(TILE, TILE, seed=s) for s in range(6)])
  scene = tiles.reshape(3, 2, TILE, TILE, 4).transpose(0, 2, 1, 3, 4).reshape(3 * TILE,
                                                                             2 * TILE, 4)
  path = write_stack(tmp_path / "known.tif", scene)
  got, _ = blended_probabilities(ft_ckpt, path, overlap=0.0)
  want = _tilewise(ft_ckpt, tiles).reshape(3, 2, TILE, TILE, 3).transpose(0, 2, 1, 3, 4)
  np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-5)

  # With overlap: away from seams (pixels one tile alone covers) the prediction is exactly
  # that tile's, and every pixel is a convex blend of the tiles covering it. Tiles are cut
  # from the scene mirrored by half the overlap.
  scene = field_scene(88, 112, seed=int(rng.integers(100)))
  path = write_stack(tmp_path / "overlap.tif", scene)
  got, layout = blended_probabilities(ft_ckpt, path, overlap=0.25)
  m = layout.pad
  assert m == 4
  padded = np.pad(scene, ((m, m), (m, m), (0, 0)), mode="reflect")
  tiles = np.stack([padded[r:r + TILE, c:c + TILE] for r, c in layout.origins])
  probs = _tilewise(ft_ckpt, tiles)
  got_p = np.full(padded.shape[:2] + (3,), np.nan, np.float32)
  got_p[m:-m, m:-m] = got
  cover = np.zeros(padded.shape[:2], int)
  for r, c in layout.origins:
    cover[r:r + TILE, c:c + TILE] += 1
  lo = np.full(got_p.shape, np.inf)
  hi = np.full(got_p.shape, -np.inf)
  checked = 0
  for (r, c), p in zip(layout.origins, probs):
    g = got_p[r:r + TILE, c:c + TILE]
    alone = (cover[r:r + TILE, c:c + TILE] == 1) & ~np.isnan(g[..., 0])
    np.testing.assert_allclose(g[alone], p[alone], atol=1e-5)
    checked += alone.sum()
    lo[r:r + TILE, c:c + TILE] = np.minimum(lo[r:r + TILE, c:c + TILE], p)
    hi[r:r + TILE, c:c + TILE] = np.maximum(hi[r:r + TILE, c:c + TILE], p)
  assert checked > 0.3 * got.shape[0] * got.shape[1]
  inside = ~np.isnan(got_p)
  assert (got_p[inside] >= lo[inside] - 1e-5).all() and (got_p[inside] <= hi[inside] + 1e-5).all()


def test_a_head_that_sees_the_input_predicts_a_scene_like_its_tiles(tmp_path):
  """A model fine-tuned with model.head_input='raw3x3' (its head reads the input beside the
  features) runs on a scene from its checkpoint's metadata alone, tile for tile."""
  ckpt = save_checkpoint(tmp_path / "ft_input", head_input="raw3x3", seed=5)
  tiles = np.stack([field_scene(TILE, TILE, seed=s) for s in range(2)])
  scene = tiles.transpose(1, 0, 2, 3).reshape(TILE, 2 * TILE, 4)
  got, _ = blended_probabilities(ckpt, write_stack(tmp_path / "two.tif", scene), overlap=0.0)
  want = _tilewise(ckpt, tiles).transpose(1, 0, 2, 3).reshape(got.shape)
  np.testing.assert_allclose(got, want, atol=1e-5)
  plain = save_checkpoint(tmp_path / "ft_plain", seed=5)   # same backbone, head on features
  assert not np.allclose(_tilewise(plain, tiles), _tilewise(ckpt, tiles), atol=1e-3)


def test_constant_scene_gives_constant_map(tmp_path, ft_ckpt):
  image = np.broadcast_to(np.array([900, 1500, 1100, 2600], np.uint16), (150, 170, 4))
  scene = write_product(tmp_path / "const", np.ascontiguousarray(image))
  out = tmp_path / "const.tif"
  # Overlap 32 px: the tiny model's zero-padding effects reach about 16 px into a tile.
  inference.predict_scene(ft_ckpt, scene, str(out), probabilities=True,
                          **{**FAST, "tile_size": 64, "overlap": 0.5})
  classes = read(out, indexes=1)
  assert len(np.unique(classes)) == 1 and classes[0, 0] != 255
  # No seams, and no border effect either (the border is mirrored): every pixel's
  # probabilities are the same, up to float16 storage.
  probs = read(str(out).replace(".tif", "_prob.tif"))
  np.testing.assert_allclose(probs, probs[:, :1, :1] * np.ones_like(probs), atol=2e-3)


def test_nodata_in_gives_nodata_out(tmp_path, ft_ckpt):
  image = field_scene(90, 75)
  image[:10] = 0                          # nodata rows (DN 0 in every band)
  image[40:45, 20:30, 2] = 0              # nodata in one band only: the pixel is invalid
  scene = write_product(tmp_path / "nod", image)
  m = np.zeros((90, 75), np.uint8)
  m[-7:] = 1                              # clouds
  rasters.write_raster(os.path.join(scene, "cloud_mask.tif"), m, 10)
  out = tmp_path / "nod.tif"
  summary = inference.predict_scene(ft_ckpt, scene, str(out), probabilities=True, **FAST)
  classes = read(out, indexes=1)
  invalid = np.zeros((90, 75), bool)
  invalid[:10] = invalid[-7:] = True
  invalid[40:45, 20:30] = True
  np.testing.assert_array_equal(classes == 255, invalid)
  probs = read(str(out).replace(".tif", "_prob.tif"))
  np.testing.assert_array_equal(np.isnan(probs).all(axis=0), invalid)
  assert not np.isnan(probs[:, ~invalid]).any()
  assert summary.valid_pixels == (~invalid).sum()


def test_scene_smaller_than_a_tile_and_odd_sizes(tmp_path, ft_ckpt):
  for h, w in ((20, 45), (33, 31), (65, 97)):
    scene = write_product(tmp_path / f"s{h}x{w}", field_scene(h, w))
    out = tmp_path / f"s{h}x{w}.tif"
    inference.predict_scene(ft_ckpt, scene, str(out), **FAST)
    with rasterio.open(out) as ds:
      assert (ds.height, ds.width) == (h, w)
      assert (ds.read(1) != 255).all()


def test_multiband_geotiff_and_product_folder_agree(tmp_path, ft_ckpt):
  image = field_scene(70, 90, seed=5)
  image[:3] = 0
  product = write_product(tmp_path / "prod", image)
  # Stacked in another band order, with one extra band: selected by description.
  order = [3, 0, 2, 1]
  extra = np.full(image.shape[:2] + (1,), 77, np.uint16)
  stacked = np.concatenate([image[..., order], extra], axis=-1)
  stack = write_stack(tmp_path / "stack.tif", stacked, [BANDS[i] for i in order] + ["B11"])
  outs = []
  for name, src in (("a", product), ("b", stack)):
    out = tmp_path / f"{name}.tif"
    inference.predict_scene(ft_ckpt, src, str(out), probabilities=True, **FAST)
    outs.append((read(out), read(str(out).replace(".tif", "_prob.tif"))))
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  np.testing.assert_array_equal(outs[0][1], outs[1][1])
  # Without descriptions, band_order declares them.
  bare = write_stack(tmp_path / "bare.tif", stacked, descriptions=False)
  with pytest.raises(DataError, match="band_order"):
    inference.predict_scene(ft_ckpt, bare, str(tmp_path / "c.tif"), **FAST)
  inference.predict_scene(ft_ckpt, bare, str(tmp_path / "c.tif"),
                          band_order=tuple(BANDS[i] for i in order) + ("B11",), **FAST)
  np.testing.assert_array_equal(read(tmp_path / "c.tif"), outs[0][0])


def test_missing_band_is_a_clear_error(tmp_path, ft_ckpt):
  image = field_scene(40, 40)
  scene = write_product(tmp_path / "missing", image)
  os.remove(os.path.join(scene, "B04.tif"))
  out = tmp_path / "x.tif"
  with pytest.raises(DataError, match=r"B04.*not found"):
    inference.predict_scene(ft_ckpt, scene, str(out), **FAST)
  stack = write_stack(tmp_path / "three.tif", image[..., [0, 1, 3]], ["B02", "B03", "B08"])
  with pytest.raises(DataError, match=r"\['B04'\] not in this file"):
    inference.predict_scene(ft_ckpt, stack, str(out), **FAST)
  assert not os.path.exists(out)


def test_checkpoint_kind_dates_and_pixel_size_are_checked(tmp_path, ft_ckpt, pre_ckpt):
  scene = write_product(tmp_path / "p", field_scene(40, 40))
  with pytest.raises(DataError, match="pretrain.*--mode=embed"):
    inference.predict_scene(pre_ckpt, scene, str(tmp_path / "x.tif"), **FAST)
  with pytest.raises(DataError, match="without a date"):
    inference.predict_scene(ft_ckpt, [scene, scene], str(tmp_path / "x.tif"), **FAST)
  with pytest.raises(DataError, match="stacks 1 date"):
    inference.predict_scene(ft_ckpt, f"{scene}@20210101,{scene}@20210201",
                            str(tmp_path / "x.tif"), **FAST)
  coarse = tmp_path / "coarse"
  os.makedirs(coarse)
  for b in BANDS:
    rasters.write_raster(coarse / f"{b}.tif", np.full((20, 20), 500, np.uint16), 20)
  with pytest.raises(DataError, match="pixel size 20"):
    inference.predict_scene(ft_ckpt, str(coarse), str(tmp_path / "x.tif"), **FAST)
  with pytest.raises(ConfigError, match="--out"):
    inference.predict_scene(ft_ckpt, scene, "", **FAST)
  with pytest.raises(ConfigError, match="overlap"):
    inference.predict_scene(ft_ckpt, scene, str(tmp_path / "x.tif"), **{**FAST, "overlap": 1.0})


def test_a_head_that_reads_the_input_dates_needs_that_many(tmp_path):
  """A backbone that takes any number of dates ('shared') still fixes them when the head
  reads the input (head_input): one line naming the option, not a shape error."""
  name = "S2B_MSIL2A_2021{}T100000_N0300_R122_T33TUM_x"
  a = write_product(tmp_path / name.format("0510"), field_scene(40, 40))
  b = write_product(tmp_path / name.format("0615"), field_scene(40, 40, seed=1))
  free = save_checkpoint(tmp_path / "free", num_dates=2, temporal="shared")
  inference.predict_scene(free, str(a), str(tmp_path / "one.tif"), **FAST)   # any T
  fixed = save_checkpoint(tmp_path / "fixed", num_dates=2, temporal="shared",
                          head_input="raw3x3")
  inference.predict_scene(fixed, f"{a},{b}", str(tmp_path / "two.tif"), **FAST)
  with pytest.raises(DataError, match=r"reads its input's 2 date\(s\) "
                                      r"\(model.head_input='raw3x3'\) but the scene has 1"):
    inference.predict_scene(fixed, str(a), str(tmp_path / "x.tif"), **FAST)


def test_time_series_scene(tmp_path):
  ckpt = save_checkpoint(tmp_path / "ts", num_dates=2)
  name = "S2B_MSIL2A_2021{}T100000_N0300_R122_T33TUM_x"
  a = write_product(tmp_path / name.format("0510"), field_scene(50, 60))
  img = field_scene(50, 60, seed=1)
  img[:, :20] = 0                 # second date: left part unobserved
  b = write_product(tmp_path / name.format("0615"), img)
  out = tmp_path / "ts.tif"
  inference.predict_scene(ckpt, f"{b},{a}", str(out), **FAST)       # any order: sorted by date
  assert (read(out) != 255).all()                                   # valid on ANY date
  inference.predict_scene(ckpt, [a, b], str(tmp_path / "all.tif"), valid_reduce="all", **FAST)
  classes = read(tmp_path / "all.tif", indexes=1)
  assert (classes[:, :20] == 255).all() and (classes[:, 20:] != 255).all()
  # A manifest (as the s2_tiles builder reads it) and dated paths give the same map.
  manifest = tmp_path / "series.csv"
  manifest.write_text(f"path,date\n{os.path.basename(b)},20210615\n"
                      f"{os.path.basename(a)},20210510\n")
  inference.predict_scene(ckpt, str(manifest), str(tmp_path / "m.tif"), **FAST)
  np.testing.assert_array_equal(read(tmp_path / "m.tif"), read(out))


def test_failed_run_leaves_nothing(tmp_path, ft_ckpt, monkeypatch):
  scene = write_product(tmp_path / "f", field_scene(70, 70))
  out_dir = tmp_path / "out"

  def boom(*a, **k):
    raise RuntimeError("disk full")

  monkeypatch.setattr(engine.RasterSink, "finish", boom)
  with pytest.raises(RuntimeError):
    inference.predict_scene(ft_ckpt, scene, str(out_dir / "m.tif"), probabilities=True, **FAST)
  assert os.listdir(out_dir) == []
  monkeypatch.undo()

  # Killed (SIGTERM) in the middle of the pass: temporary files are removed too.
  import signal  # pylint: disable=import-outside-toplevel
  before = signal.getsignal(signal.SIGTERM)
  write = engine.RasterSink.write

  def killed(self, first, rows):
    write(self, first, rows)
    if first > 0:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(engine.RasterSink, "write", killed)
  with pytest.raises(SystemExit):
    inference.embed_scene(ft_ckpt, scene, str(out_dir / "e.tif"), **FAST)
  assert os.listdir(out_dir) == []
  assert signal.getsignal(signal.SIGTERM) is before


# A child running a small embed whose COG copy (GDAL's C code) is running when SIGTERM
# arrives: a thread sends it once GDAL's overview temporary exists beside the output.
_KILLED_IN_COG = """
import glob, os, signal, sys, threading, time
import rasterio.shutil
from ee_jax import inference
workdir, scene, out = sys.argv[1:4]
real_copy = rasterio.shutil.copy
copying = threading.Event()

def signal_when_overviews_start():
  deadline = time.time() + 60
  while not glob.glob(os.path.join(os.path.dirname(out), ".*.ovr.tmp")):
    if time.time() > deadline:
      break
    time.sleep(0.001)
  print("signal sent during the COG copy" if copying.is_set() else "signal sent late",
        flush=True)
  os.kill(os.getpid(), signal.SIGTERM)

def copy(*args, **kwargs):
  copying.set()
  threading.Thread(target=signal_when_overviews_start, daemon=True).start()
  real_copy(*args, **kwargs)
  copying.clear()
  time.sleep(60)   # the signal must have been handled by now

rasterio.shutil.copy = copy
inference.embed_scene(workdir, scene, out, tile_size=128, overlap=0.25, per_device_batch=2,
                      progress=False)
print("finished", flush=True)
"""


def test_sigterm_during_cog_writing_leaves_nothing(tmp_path, pre_ckpt):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  scene = write_product(tmp_path / "s", field_scene(600, 600))   # > 512 px: COG overviews
  out_dir = tmp_path / "out"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _KILLED_IN_COG, pre_ckpt, scene,
                         str(out_dir / "emb.tif")], cwd=repo, env=env, capture_output=True,
                        text=True, timeout=300)
  assert "signal sent during the COG copy" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
  assert proc.returncode == 143, proc.stderr[-2000:]
  assert os.listdir(out_dir) == []
  lines = [x for x in proc.stderr.splitlines() if "stopped" in x]
  assert lines == [f"embed: stopped by SIGTERM; nothing was written (no {out_dir / 'emb.tif'}; "
                   f"temporary files removed)"], proc.stderr[-2000:]


# ------------------------------------------------------------------------------ embed
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_embed_writes_embedding_preview_and_kmeans(tmp_path, pre_ckpt):
  image = field_scene(130, 100, seed=2)
  image[:5] = 0
  scene = write_product(tmp_path / "e", image)
  out = tmp_path / "emb" / "emb.tif"
  summary = inference.embed_scene(pre_ckpt, scene, str(out), kmeans_k=4, preview_size=50,
                                  **FAST)
  stem = str(out)[:-4]
  assert summary.outputs == {"embedding": str(out), "pca_preview": stem + "_pca.png",
                             "kmeans": stem + "_kmeans.tif"}
  with rasterio.open(os.path.join(scene, "B02.tif")) as src:
    grid = (src.crs, src.transform, src.width, src.height)
  with rasterio.open(out) as ds:
    assert (ds.crs, ds.transform, ds.width, ds.height) == grid
    assert ds.count == 8 and ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
    emb = ds.read()
  assert np.isnan(emb[:, :5]).all() and not np.isnan(emb[:, 5:]).any()
  assert emb[:, 5:].std(axis=(1, 2)).max() > 0
  with rasterio.open(stem + "_kmeans.tif") as ds:
    assert (ds.crs, ds.transform, ds.width, ds.height) == grid
    km = ds.read(1)
    assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
  assert (km[:5] == 255).all() and set(np.unique(km[5:])) <= set(range(4))
  # The k-means map is the nearest centroid of each stored embedding: same pixels, same
  # cluster (recomputed centroids of the map's clusters separate them).
  x = np.moveaxis(emb[:, 5:], 0, -1).reshape(-1, 8)
  labels = km[5:].ravel()
  cents = np.stack([x[labels == j].mean(0) for j in np.unique(labels)])
  assert (cluster.assign(x, cents) == np.searchsorted(np.unique(labels), labels)).mean() > 0.9
  with rasterio.open(stem + "_pca.png") as ds:
    assert ds.count == 3 and ds.dtypes[0] == "uint8"
    assert (ds.height, ds.width) == (50, 38)   # longest side 50, 100 * 50 / 130 = 38.5
    rgb = ds.read()
  assert rgb[:, 5:].std() > 0
  # Deterministic: a second run gives the same k-means map.
  inference.embed_scene(pre_ckpt, scene, str(tmp_path / "again.tif"), kmeans_k=4, **FAST)
  np.testing.assert_array_equal(read(tmp_path / "again_kmeans.tif", indexes=1), km)


def test_preview_longest_side_is_preview_size_and_bins_are_means():
  # The demo's scene: an integer block factor gave 974 x 967.
  assert engine.preview_shape(1947, 1933, 1024) == (1024, 1017)
  assert engine.preview_shape(1933, 1947, 1024) == (1017, 1024)
  assert engine.preview_shape(600, 300, 1024) == (600, 300)   # smaller: full size
  assert engine.preview_shape(2000, 10, 0) == (2000, 10)
  assert engine.preview_shape(3000, 2, 1000) == (1000, 1)
  rng = np.random.default_rng(0)
  h, w = 7, 5
  colour = rng.random((h, w, 3))
  valid = rng.random((h, w)) > 0.2
  # 7 rows -> 3: r * 3 // 7 = 0,0,0,1,1,2,2; 5 cols -> 2 (round(5 * 3 / 7)): 0,0,0,1,1.
  row_bins, col_bins = [[0, 1, 2], [3, 4], [5, 6]], [[0, 1, 2], [3, 4]]
  expected = np.zeros((3, 2, 3))
  for i, rs in enumerate(row_bins):
    for j, cs in enumerate(col_bins):
      m = valid[np.ix_(rs, cs)]
      expected[i, j] = colour[np.ix_(rs, cs)][m].mean(axis=0) if m.any() else 0
  for band in (1, 2, 3, 7):   # row bands of any size, straddling bins
    p = engine.Preview(h, w, 3)
    for r0 in range(0, h, band):
      p.add(r0, colour[r0:r0 + band], valid[r0:r0 + band])
    np.testing.assert_array_equal(p.rgb(), np.round(255 * expected).astype(np.uint8))


def test_kmeans_and_pca_recover_structure():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 10, (3, 5)).astype(np.float32)
  x = np.concatenate([c + rng.normal(0, 0.1, (200, 5)) for c in centres]).astype(np.float32)
  found = cluster.kmeans(x, 3, seed=1)
  dist = np.abs(found[:, None] - centres[None]).max(-1)
  assert dist.min(axis=1).max() < 0.1
  labels = cluster.assign(x, found)
  assert len(np.unique(labels[:200])) == 1 and len(np.unique(labels)) == 3
  pca = cluster.fit_pca(x)
  assert pca.components.shape == (3, 5)
  np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-5)
  rgb = pca.rgb(x)
  assert rgb.min() >= 0 and rgb.max() <= 1


# ----------------------------------------------------------------------- config/modes
def test_options_from_config_and_metadata():
  meta = {"tile_size": 64, "config": {"data": {"builder": {"remove_offset": False}}}}
  o = inference.Options.resolve(None, meta)
  assert o.tile_size == 256 and o.remove_offset == "False" and o.nodata == "auto"
  cfg = ml_collections.ConfigDict({"inference": inference.default_config()})
  cfg.inference.tile_size = 96
  cfg.inference.overlap = 0.5
  o = inference.Options.resolve(cfg, {"tile_size": 512})
  assert (o.tile_size, o.overlap_px) == (96, 48)
  assert inference.Options.resolve(None, {"tile_size": 512}).tile_size == 512
  cfg.inference.overlap = 1.5
  with pytest.raises(ConfigError, match="overlap"):
    inference.Options.resolve(cfg, {})


def test_modes_need_scene_and_workdir(tmp_path, ft_ckpt):
  with pytest.raises(ConfigError, match="--scene"):
    inference.MODES["predict"](None, ft_ckpt, scene=None, out="x.tif")
  with pytest.raises(ConfigError, match="--workdir"):
    inference.MODES["embed"](None, None, scene="a", out="x.tif")


def test_run_modes_through_run_py(tmp_path, ft_ckpt, capsys):
  from ee_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  scene = write_product(tmp_path / "r", field_scene(60, 50))
  cfg = ml_collections.ConfigDict({"inference": inference.default_config()})
  cfg.inference.update(tile_size=TILE, per_device_batch=2, probabilities=True)
  run_lib.run("predict", cfg, ft_ckpt, scene=scene, out=str(tmp_path / "r.tif"))
  assert read(tmp_path / "r.tif").shape == (1, 60, 50)
  assert os.path.exists(tmp_path / "r_prob.tif")          # config.inference was read
  assert "Mpx/s" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="--scene is required"):
    run_lib.run("predict", cfg, ft_ckpt, out=str(tmp_path / "r.tif"))
  with pytest.raises(SystemExit, match="takes no --scene"):
    run_lib.run("build", cfg, None, scene=scene, out=None)
  with pytest.raises(SystemExit, match="unknown keys"):
    cfg.inference.tile_sise = 3
    run_lib.run("embed", cfg, ft_ckpt, scene=scene, out=str(tmp_path / "e.tif"))


def test_launch_predict_and_embed(tmp_path, ft_ckpt):
  """The command lines of issue 5 (a config without an `inference` section works too)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  scene = write_stack(tmp_path / "scene.tif", field_scene(70, 60))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  common = [sys.executable, os.path.join(repo, "launch.py"),
            "--config=" + os.path.join(repo, "configs", "finetune_synthetic.py:smoke"),
            f"--workdir={ft_ckpt}", f"--scene={scene}"]
  x0, y0 = rasters.ORIGIN
  points = _write_points(tmp_path / "pts.csv", ["x", "y", "label"],
                         [(x0 + 5, y0 - 5, "a"), (x0 + 105, y0 - 305, "b")])
  for mode, out, extra in (("predict", "map.tif", []),
                           ("embed", "emb.tif", [f"--points={points}"])):
    proc = subprocess.run(common + [f"--mode={mode}", f"--out={tmp_path / out}"] + extra,
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(tmp_path / out) in proc.stdout and "Mpx/s" in proc.stdout
  assert os.path.exists(tmp_path / "emb_kmeans.tif") and os.path.exists(tmp_path / "emb_pca.png")
  with open(tmp_path / "emb_points.csv", encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert len(lines) == 3 and lines[2].startswith(f"{x0 + 105},{y0 - 305},b,")
  assert str(tmp_path / "emb_points.csv") in proc.stdout
  proc = subprocess.run(common + ["--mode=predict"], cwd=repo, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and "error: --out is required" in proc.stderr


def test_synthetic_scene_files_read_back_as_generated(tmp_path):
  """A synthetic_landcover scene written as files reads back, through the scene reader,
  as exactly the model inputs its tiles hold (observed pixels; unobserved ones are 0)."""
  from ee_jax.inference import synthetic  # pylint: disable=import-outside-toplevel
  params = {"tile_size": 16, "scene_size": 48, "num_dates": 3, "num_bands": 4}
  out = synthetic.write_synthetic_scene(params, str(tmp_path), "test", 1)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tfds_builders.synthetic_landcover.builder import SyntheticLandcover  # pylint: disable=import-outside-toplevel
  builder = SyntheticLandcover(params=params, data_dir="/nonexistent",
                               config=tfds.core.BuilderConfig(name="t"))
  g = builder.generate_scene("test", 1)
  bands = builder._bands()  # pylint: disable=protected-access
  meta = {"bands": bands, "num_dates": 3, "gsd": 10.0, "model": {"temporal": "stack"}}
  opts = inference.Options.resolve(None, meta)
  scene = source.open_scene(out["manifest"], meta, opts)
  assert [a.date for a in scene.acquisitions] == list(g["dates"])
  with source.RowBuffer(scene, bands, "bilinear") as buf:
    buf.ensure(0, 48)
    image, valid = buf.image, buf.valid
  np.testing.assert_array_equal(valid, g["valid"])
  np.testing.assert_array_equal(image[valid], np.maximum(g["image"][g["valid"]], 1))
  assert (image[~valid] == 0).all()
  assert read(out["label"], indexes=1).shape == (48, 48)
  s = synthetic.score(out["label"], out["label"])
  assert s["oa"] == 1.0 and s["miou"] == 1.0


# ------------------------------------------------------------------- embed at points
def _write_points(path, header, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.write(",".join(header) + "\n")
    f.writelines(",".join(str(v) for v in r) + "\n" for r in rows)
  return str(path)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_embed_at_points_writes_the_embeddings_table(tmp_path, pre_ckpt):
  import csv  # pylint: disable=import-outside-toplevel
  image = field_scene(50, 40, seed=6)
  image[:3] = 0                                          # nodata rows: NaN embeddings there
  scene = write_product(tmp_path / "p", image)
  x0, y0 = rasters.ORIGIN
  pixels = [(0, 0), (1, 39), (10, 5), (25, 20), (49, 39), (37, 2)]   # (row, col)
  # Pixel centres, and one point just inside a pixel's corner (it is that pixel).
  rows = [(x0 + 10 * c + 5, y0 - 10 * r - 5, f"class{k % 3}") for k, (r, c) in
          enumerate(pixels)]
  rows[3] = (x0 + 10 * 20 + 0.01, y0 - 10 * 25 - 0.01, "corner")
  points = _write_points(tmp_path / "points.csv", ["x", "y", "label"], rows)
  out = tmp_path / "emb" / "emb.tif"
  summary = inference.embed_scene(pre_ckpt, scene, str(out), points=points, kmeans_k=2, **FAST)
  table = tmp_path / "emb" / "emb_points.csv"
  assert summary.outputs["points"] == str(table)
  with open(table, encoding="utf-8") as f:
    got = list(csv.reader(f))
  assert got[0] == ["x", "y", "label"] + [f"e{i}" for i in range(8)] and len(got) == 7
  assert [r[2] for r in got[1:]] == [r[2] for r in rows]
  assert [float(r[0]) for r in got[1:]] == [r[0] for r in rows]
  values = np.array([[float(v) for v in r[3:]] for r in got[1:]])
  with rasterio.open(out) as ds:
    emb = ds.read()                                      # [D, H, W], stored as float16
  want = np.stack([emb[:, r, c] for r, c in pixels])
  assert np.isnan(values[0]).all() and np.isnan(values[1]).all()   # rows 0, 1: nodata
  np.testing.assert_array_equal(np.isnan(values), np.isnan(want))
  np.testing.assert_allclose(values[2:], want[2:], rtol=1e-3, atol=1e-3)
  assert not np.allclose(values[2], values[3], atol=1e-3)           # different pixels differ
  # lon/lat of the same pixel centres give the same table (and Parquet with pyarrow).
  from rasterio.warp import transform  # pylint: disable=import-outside-toplevel
  lons, lats = transform(rasters.CRS, "EPSG:4326", [r[0] for r in rows[2:]],
                         [r[1] for r in rows[2:]])
  lonlat = _write_points(tmp_path / "lonlat.csv", ["lon", "lat", "id"],
                         [(lo, la, k) for k, (lo, la) in enumerate(zip(lons, lats))])
  inference.embed_scene(pre_ckpt, scene, str(tmp_path / "ll.tif"), points=lonlat,
                        kmeans_k=2, points_format="parquet", **FAST)
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  t = pq.read_table(tmp_path / "ll_points.parquet").to_pydict()
  assert list(t)[:3] == ["lon", "lat", "id"] and t["id"] == [0.0, 1.0, 2.0, 3.0]
  np.testing.assert_allclose(np.array([t[f"e{i}"] for i in range(8)]).T, values[2:],
                             rtol=1e-6)


def test_points_outside_the_scene_or_malformed_are_one_line(tmp_path, pre_ckpt):
  from ee_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  scene = write_product(tmp_path / "p", field_scene(40, 40))
  x0, y0 = rasters.ORIGIN
  inside = (x0 + 15, y0 - 15, "a")
  cases = {
      "outside.csv": (["x", "y", "label"], [inside, inside, (x0 + 405, y0 - 5, "b"),
                                            (x0 - 1, y0, "c")]),
      "columns.csv": (["east", "north"], [inside[:2]]),
      "text.csv": (["x", "y"], [inside[:2], ("12a", y0 - 5)]),
      "ragged.csv": (["x", "y"], [inside[:2], inside]),
  }
  messages = {
      "outside.csv": r"outside.csv, line 4: point \(x=500405.0, y=4599995.0\) lies outside "
                     r"the scene .*\(x 500000 to 500400, y 4599600 to 4600000 in "
                     r"EPSG:32633\); 2 of 4 points are outside",
      "columns.csv": r"columns.csv: needs columns x,y .* or lon,lat",
      "text.csv": r"text.csv, line 3: x='12a' is not a number",
      "ragged.csv": r"ragged.csv, line 3: 3 values for the 2 columns \['x', 'y'\]",
  }
  cfg = ml_collections.ConfigDict({"inference": inference.default_config()})
  cfg.inference.update(FAST)
  for name, (header, rows) in cases.items():
    path = _write_points(tmp_path / name, header, rows)
    with pytest.raises(SystemExit, match=messages[name]) as e:
      run_lib.run("embed", cfg, pre_ckpt, scene=scene, out=str(tmp_path / "o" / "e.tif"),
                  points=path)
    assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "o" / "e.tif")
  with pytest.raises(SystemExit, match="no file"):
    run_lib.run("embed", cfg, pre_ckpt, scene=scene, out=str(tmp_path / "e.tif"),
                points=str(tmp_path / "none.csv"))
  with pytest.raises(SystemExit, match="--mode=predict takes no --points"):
    run_lib.run("predict", cfg, pre_ckpt, scene=scene, out=str(tmp_path / "e.tif"),
                points=str(tmp_path / "outside.csv"))
