"""configs/pretrain_pod.py: its batch and learning-rate arithmetic is docs/scaling.md's
rule, its mistakes are one line, and `:smoke` pre-trains on a Major TOM Core shard written
in the published layout (2 fake CPU devices, through launch.py as a user runs it)."""

import json
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import pretrain_pod
from ee_jax.data import datasets
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo.bands import S2_L2A_BANDS, S2_NATIVE_GSD
from tests.test_archives import _geotiff_bytes, _write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
CELL = 96   # 10 m pixels a side: 9 tiles of the smoke config's 32 px


def _cells(n):
  """`n` Major TOM Core-S2L2A rows with all 12 L2A bands at native resolution."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    origin = (500000.0 + i * CELL * 10.0, 4600000.0)
    row = {"product_id": f"S2A_MSIL2A_20220706T085611_N0400_R007_T33TUG_2022070612000{i}",
           "grid_cell": f"{433 + i}U_1095R", "product_datetime": "20220706T085611"}
    for band in S2_L2A_BANDS:
      gsd = S2_NATIVE_GSD[band]
      px = -(-CELL * 10 // gsd)
      row[band] = _geotiff_bytes(rng.integers(1001, 5000, (px, px)).astype(np.uint16), gsd,
                                 "EPSG:32633", origin)
    rows.append(row)
  return rows


@pytest.mark.parametrize("arg", [None, "devices=16", "ssl4eo,devices=32", "smoke,devices=2"])
def test_batch_and_learning_rate_follow_the_documented_rule(arg):
  c = pretrain_pod.get_config(arg)
  pod = c.pod
  assert c.data.per_device_batch * pod.devices == pod.global_batch
  # docs/scaling.md, way 1 + the square-root rule from the one-host reference.
  assert c.optim.learning_rate == pytest.approx(
      pod.reference_lr * math.sqrt(pod.global_batch / pod.reference_batch))
  if arg and "smoke" in arg:
    return
  assert c.data.builder.archive.layout == ("ssl4eo" if "ssl4eo" in (arg or "")
                                           else "majortom_parquet")
  assert c.optim.warmup_steps == pretrain_pod.WARMUP_EXAMPLES // pod.global_batch
  assert c.train.checkpoint_every == pretrain_pod.CHECKPOINT_EXAMPLES // pod.global_batch
  tiles_per_image = (pod.image_pixels // c.data.builder.tile_size) ** 2
  train = pod.archive_images * tiles_per_image * c.data.builder.split_fractions["train"]
  assert c.train.steps == pod.epochs * int(train) // pod.global_batch
  assert c.model.dtype == "bfloat16"


def test_docs_state_the_shipped_figures():
  """The scaling page's section names the global batch and the learning rate the config
  computes (whoever changes one sees the other)."""
  c = pretrain_pod.get_config(None)
  with open(os.path.join(REPO, "docs", "scaling.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Pre-training on an archive at pod scale", 1)[1].split("\n## ", 1)[0].lower()
  assert f"global batch {c.pod.global_batch:,}" in section
  assert f"{c.optim.learning_rate:.2e}" in section
  assert f"{c.train.steps:,} steps" in section


@pytest.mark.parametrize("arg, words", [("bogus", "unknown argument"),
                                        ("devices=3", "does not divide"),
                                        ("devices=0", "unknown argument")])
def test_bad_arguments_are_one_line(arg, words):
  with pytest.raises(ValueError, match=words) as e:
    pretrain_pod.get_config(arg)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("root, words", [("", "archive.root is empty"),
                                         ("/no/such/archive", "shard folder not found")])
def test_missing_archive_root_is_one_line(tmp_path, root, words):
  c = pretrain_pod.get_config("smoke,devices=2")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.builder.archive.root = root
  with pytest.raises((ConfigError, DataError), match=words) as e:
    datasets.prepare(c.data)
  assert "\n" not in str(e.value)


def _launch(*args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu", EE_JAX_COMPILATION_CACHE="off",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_command_line_mistakes_are_one_line(tmp_path):
  config = "--config=" + os.path.join(REPO, "configs", "pretrain_pod.py")
  bad_key = _launch("--mode=build", config, "--config.data.builder.archive.rot=/x")
  no_root = _launch("--mode=build", config + ":devices=16",
                    f"--config.data.data_dir={tmp_path}")
  for out, words in ((bad_key, "unknown config key 'rot'"), (no_root, "archive.root is empty")):
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_wrong_device_count_stops_before_training():
  """The test process has 2 devices; the config's global batch was meant for 8."""
  from ee_jax.train.pretrain import check_pod_batch  # pylint: disable=import-outside-toplevel
  check_pod_batch(pretrain_pod.get_config("smoke,devices=2"))
  with pytest.raises(ConfigError, match=r"pass :devices=2 to the config"):
    check_pod_batch(pretrain_pod.get_config("smoke"))
  check_pod_batch(ml_collections.ConfigDict({"data": {"per_device_batch": 3}}))  # no `pod`


def test_smoke_pretrains_two_steps_on_a_major_tom_shard(tmp_path):
  root = tmp_path / "Core-S2L2A"
  _write_shard(root / "images" / "part_00001.parquet", _cells(4))
  work = tmp_path / "work"
  out = _launch("--mode=pretrain",
                "--config=" + os.path.join(REPO, "configs", "pretrain_pod.py") + ":smoke,devices=2",
                f"--config.data.builder.archive.root={root}",
                f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={work}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "2 devices" in out.stdout + out.stderr and "global batch 8" in out.stdout + out.stderr
  with open(work / "metrics.jsonl", encoding="utf-8") as f:
    train = [r for r in map(json.loads, f) if "loss" in r and r.get("split", "train") == "train"]
  losses = [r["loss"] for r in train]
  assert [r["step"] for r in train][-1] == 2 and all(np.isfinite(losses)), losses
  with open(work / "config.json", encoding="utf-8") as f:
    assert json.load(f)["pod"]["global_batch"] == 8
