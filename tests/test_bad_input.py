"""Bad input: each case raises one clear error naming the file or key, and leaves nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ee_jax.data import datasets
from ee_jax.errors import DataError
from tests import rasters
from tests.helpers import BANDS, data_cfg, s2_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nothing_left(cfg):
  assert not datasets.is_prepared(cfg)
  assert not datasets.dataset_path(cfg).exists()


def test_missing_band_file_names_product_and_band(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64, skip=("B8A",))
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match=r"prod: band file\(s\) \['B8A'\] not found"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_truncated_geotiff_names_the_file_and_leaves_nothing(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  # A real, compressed, random-valued band, then cut in half.
  path = os.path.join(prod, "B04.tif")
  rng = np.random.default_rng(0)
  rasters.write_raster(path, rng.integers(1, 5000, (64, 64)).astype(np.uint16), 10,
                       compress="deflate", tiled=True, blockxsize=16, blockysize=16)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match="B04.tif.*(truncated|corrupt)"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_band_files_on_different_crs_are_refused(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  rasters.write_raster(os.path.join(prod, "B05.tif"), np.ones((32, 32), np.uint16), 20,
                       crs="EPSG:32634")
  with pytest.raises(DataError, match="different CRSs.*EPSG:3263[34].*B05.tif.*EPSG:32634"):
    datasets.prepare(s2_cfg(tmp_path, [prod]))


def test_band_files_with_different_extents_are_refused(tmp_path):
  prod = rasters.write_product(tmp_path / "prod", BANDS, size_10m=64)
  x, y = rasters.ORIGIN
  rasters.write_raster(os.path.join(prod, "B03.tif"), np.ones((64, 64), np.uint16), 10,
                       origin=(x + 500, y))
  with pytest.raises(DataError, match="different extents.*B03.tif"):
    datasets.prepare(s2_cfg(tmp_path, [prod]))


def test_all_nodata_scene_has_no_valid_tiles(tmp_path):
  prod = rasters.write_product(tmp_path / "empty_scene", BANDS, size_10m=64, nodata_rows=64)
  cfg = s2_cfg(tmp_path, [prod])
  with pytest.raises(DataError, match="no valid tiles.*empty_scene"):
    datasets.prepare(cfg)
  _nothing_left(cfg)


def test_multiband_file_missing_a_band(tmp_path):
  tif = rasters.write_raster(tmp_path / "three.tif", np.ones((3, 64, 64), np.uint16), 10)
  cfg = data_cfg(tmp_path, source="manual", bands=BANDS,
                 products=[dict(path=str(tif), band_order=["B02", "B03", "B04"])])
  with pytest.raises(DataError, match=r"three.tif: band\(s\) \['B01', .*not in this file"):
    datasets.prepare(cfg)


def _launch(*args, **kw):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args],
                        capture_output=True, text=True, cwd=REPO, **kw)


def test_unknown_config_key_is_one_clear_line(tmp_path):
  proc = _launch("--mode=build", "--config=configs/pretrain_s2.py",
                 f"--config.data.data_dir={tmp_path}", "--config.data.builder.tile_sise=32")
  assert proc.returncode != 0
  assert "unknown config key 'tile_sise'" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "s2_tiles").exists()


def test_killed_build_never_looks_complete_and_rebuild_works(tmp_path):
  prod = rasters.write_product(tmp_path / "big", BANDS, size_10m=1536)
  cfg = s2_cfg(tmp_path, [prod], block_tiles=4)
  script = ("import sys, ml_collections; from ee_jax.data import datasets; "
            f"datasets.prepare(ml_collections.ConfigDict({cfg.to_dict()!r}))")
  proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  parent = datasets.dataset_path(cfg).parent
  deadline = time.time() + 60
  while time.time() < deadline and not (parent.exists() and any(parent.iterdir())):
    time.sleep(0.05)
  time.sleep(0.5)  # well into writing tiles
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not datasets.is_prepared(cfg)
  assert not datasets.dataset_path(cfg).exists()
  builder = datasets.prepare(cfg)  # a fresh build completes despite the leftovers
  assert builder.info.splits["train"].num_examples > 0


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/pretrain_synthetic.py:smoke", "--config.train.steps=abc"],
     "error: --config.train.steps=abc: 'abc' is not a number (int)"),
    (["--config=configs/pretrain_synthetic.py:smok"],
     "error: configs/pretrain_synthetic.py: unknown argument 'smok' (known: smoke, demo, wide)"),
    (["--config=configs/pretrain_synthetic.py:smoke", "--mode=train"],
     "error: --mode=train: value should be one of <build|embed|evaluate|finetune|predict|"
     "pretrain|study>"),
    (["--config=configs/no_such.py"], "error: --config: file not found: configs/no_such.py"),
    (["--mode=build"], "error: --config is required"),
    (["--config={tmp}/offset.py"], "error: --config={tmp}/offset.py: 'remove_offset' takes a "
     "str, not the bool False; write it as a str (e.g. 'false')"),
])
def test_command_line_mistakes_are_one_line(tmp_path, args, expected):
  (tmp_path / "offset.py").write_text(
      "from configs import pretrain_s2\n\ndef get_config():\n  c = pretrain_s2.get_config()\n"
      "  c.data.builder.remove_offset = False\n  return c\n")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  proc = _launch(*args, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(expected.replace("{tmp}", str(tmp_path))), \
      proc.stderr[-2000:]


def test_half_written_metrics_line_is_dropped_on_resume_and_a_bad_one_named(tmp_path):
  from ee_jax.errors import DataError as Error  # pylint: disable=import-outside-toplevel
  from ee_jax.train import metrics_log  # pylint: disable=import-outside-toplevel
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert [r["step"] for r in metrics_log.read_metrics(str(tmp_path))] == [1, 2]
  metrics_log.MetricsLog(str(tmp_path), 10, enabled=True).truncate_after(2)
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
  path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(Error, match=rf"^{path}: line 2 is not a JSON record"):
    metrics_log.read_metrics(str(tmp_path))


def _checkpoint(workdir, params, config):
  from ee_jax import checkpoints  # pylint: disable=import-outside-toplevel
  ckpt = checkpoints.Checkpointer(str(workdir))
  ckpt.save(4, {"params": params, "step": np.full((), 4, np.int32)}, {"config": config},
            wait=True)
  return ckpt


def test_resume_with_another_architecture_is_one_line_naming_the_difference(tmp_path):
  ckpt = _checkpoint(tmp_path, {"conv": {"kernel": np.ones((3, 3, 2, 8))}}, {})
  other = {"params": {"conv": {"kernel": np.ones((3, 3, 2, 16))}, "head": np.ones(4)},
           "step": np.zeros((), np.int32)}
  with pytest.raises(DataError) as e:
    ckpt.restore(other)
  assert str(e.value) == (
      f"{tmp_path}: the config's model differs from the checkpoint at step 4: "
      "params.conv.kernel: checkpoint (3, 3, 2, 8) vs config (3, 3, 2, 16); params.head only "
      "in the config; use the config the run was started with, or another --workdir")


def test_resume_says_what_changed_keeps_the_old_config_and_a_step_count_too_low(
    tmp_path, capsys):
  from ee_jax.train import loop  # pylint: disable=import-outside-toplevel
  old = {"optim": {"learning_rate": 0.001}, "train": {"steps": 8}}
  ckpt = _checkpoint(tmp_path, {"w": np.ones(2)}, old)
  loop.say_what_resumes(str(tmp_path), ckpt, 4, 8, old)
  assert capsys.readouterr().out == ""                      # same config: a plain resume
  new = {"optim": {"learning_rate": 0.01}, "train": {"steps": 3}}
  loop.say_what_resumes(str(tmp_path), ckpt, 4, 3, new)
  assert capsys.readouterr().out.splitlines() == [
      f"Resuming {tmp_path} at step 4 with a changed config: optim.learning_rate 0.001 -> "
      f"0.01, train.steps 8 -> 3 (the checkpoint's config kept as {tmp_path}/config.4.json)",
      f"{tmp_path}: train.steps=3 is below the latest checkpoint's step 4: nothing to train "
      "(raise train.steps to continue)"]
  assert json.loads((tmp_path / "config.4.json").read_text()) == old
