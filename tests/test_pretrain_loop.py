"""The pre-training loop end to end: logs, checkpoints, learning, resume after SIGKILL."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import pretrain_synthetic
from ee_jax import checkpoints
from ee_jax.errors import DataError
from ee_jax.train import metrics_log
from ee_jax.train.pretrain import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATA = dict(num_tiles={"unlabelled": 64, "validation": 32}, tile_size=16,
                 scene_size=32, num_dates=2, num_bands=4)


def tiny_config(data_dir, steps=8, **train):
  c = pretrain_synthetic.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.data.config_name = "tiny"
  c.data.builder.update(TINY_DATA)
  c.data.per_device_batch = 4
  c.augment.crop_size = 12
  c.train.steps = steps
  c.train.update(train)
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _params(workdir):
  ckpt = checkpoints.Checkpointer(str(workdir))
  meta = ckpt.metadata()
  return ckpt, meta


def test_pretrain_writes_metrics_config_and_checkpoint_metadata(data_dir, tmp_path):
  assert jax.local_device_count() == 2
  c = tiny_config(data_dir, steps=6, log_every=2, eval_every=6, checkpoint_every=3)
  last = pretrain(c, str(tmp_path))
  records = metrics_log.read_metrics(str(tmp_path))
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == [2, 4, 6]
  # The default objective (masked reconstruction) and its metrics.
  for key in ("loss", "masked", "masked_seen", "lr", "tiles_per_s", "pixels_per_s"):
    assert np.isfinite(train[-1][key]), key
  assert "top1" not in train[-1]  # InfoNCE is off by default: none of its metrics
  assert any("eval_masked" in r for r in records)
  assert np.isfinite(last["eval_loss"])
  assert json.load(open(tmp_path / "config.json"))["train"]["steps"] == 6
  ckpt, meta = _params(tmp_path)
  assert ckpt.latest_step() == 6
  assert meta["bands"] == ["B02", "B03", "B04", "B08"]
  assert len(meta["mean"]) == len(meta["std"]) == 4
  assert meta["model"]["widths"] == [8, 16] and meta["code_version"]
  assert meta["config"]["data"]["name"] == "synthetic_landcover"


def test_checkpoint_band_list_must_match_dataset(data_dir, tmp_path):
  pretrain(tiny_config(data_dir, steps=2, eval_every=0, checkpoint_every=2), str(tmp_path))
  other = tiny_config(data_dir, steps=4, eval_every=0)
  other.data.config_name = "tiny_rgb"
  other.data.builder.num_bands = 3
  with pytest.raises(DataError) as err:
    pretrain(other, str(tmp_path))
  msg = str(err.value)
  assert "['B02', 'B03', 'B04', 'B08']" in msg and "['B02', 'B03', 'B04']" in msg


def test_rerun_of_a_finished_run_trains_nothing_and_returns(data_dir, tmp_path):
  """A study reuses finished pre-trainings this way: no step runs, no Preempted, no error."""
  c = tiny_config(data_dir, steps=2, eval_every=0, checkpoint_every=2)
  pretrain(c, str(tmp_path))
  assert isinstance(pretrain(c, str(tmp_path)), dict)
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 2


def test_loss_falls_and_retrieval_rises(data_dir, tmp_path):
  c = tiny_config(data_dir, steps=60, log_every=10, eval_every=0, checkpoint_every=60)
  c.optim.learning_rate = 3e-3
  # The loop must learn: shared crops and dates and the anchor's own pixel as its positive
  # make retrieval learnable by an 8k-parameter model in 60 steps (the default views,
  # shifted crops and a neighbouring pixel as the positive, need thousands).
  c.augment.crop_shift = 0
  c.augment.disjoint_dates = False
  c.loss.positive_jitter = 0
  c.loss.weights.update(infonce=1.0, masked=0.0)
  pretrain(c, str(tmp_path))
  train = [r for r in metrics_log.read_metrics(str(tmp_path)) if "loss" in r]
  first, final = train[0], train[-1]
  assert final["loss"] < first["loss"] - 0.3
  assert final["top1"] > first["top1"] + 0.05


def test_default_masked_objective_learns(data_dir, tmp_path):
  """The default objective: the error on hidden values falls well below its start (about
  the normalised input's variance, 1, for a model that predicts nothing)."""
  c = tiny_config(data_dir, steps=60, log_every=10, eval_every=0, checkpoint_every=60)
  c.optim.learning_rate = 3e-3
  assert dict(c.loss.weights)["masked"] > 0 and dict(c.loss.weights)["infonce"] == 0
  pretrain(c, str(tmp_path))
  train = [r for r in metrics_log.read_metrics(str(tmp_path)) if "loss" in r]
  first, final = train[0], train[-1]
  assert final["masked"] < 0.8 * first["masked"]
  assert final["masked_seen"] < 0.8 * first["masked_seen"]


def _run_pretrain_subprocess(config, workdir):
  script = ("import sys, ml_collections; sys.path.insert(0, %r)\n"
            "from ee_jax.train.pretrain import pretrain\n"
            "pretrain(ml_collections.ConfigDict(%r), %r)\n" % (REPO, config.to_dict(), workdir))
  return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_checkpoint(workdir, step, proc, timeout=180):
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if proc.poll() is not None or time.time() > deadline:
      raise AssertionError(f"no checkpoint {step}: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.02)


def test_resume_after_sigkill_equals_uninterrupted_run(data_dir, tmp_path):
  steps = 60
  c = tiny_config(data_dir, steps=steps, log_every=10, eval_every=0, checkpoint_every=10)
  straight = tmp_path / "straight"
  pretrain(c, str(straight))

  killed = tmp_path / "killed"
  proc = _run_pretrain_subprocess(c, str(killed))
  _wait_for_checkpoint(str(killed), 10, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  ckpt_dir = killed / "checkpoints"
  assert not (ckpt_dir / str(steps)).exists(), "the run finished before the kill"
  latest = checkpoints.Checkpointer(str(killed)).latest_step()
  # A save cut short leaves a temporary folder; make one explicitly: it must be ignored.
  partial = ckpt_dir / f"{steps - 1}.orbax-checkpoint-tmp-1234567"
  shutil.copytree(ckpt_dir / str(latest), partial)
  shutil.rmtree(partial / "state")
  assert checkpoints.Checkpointer(str(killed)).latest_step() == latest

  pretrain(c, str(killed))  # resumes
  a, _ = _params(straight)
  b, _ = _params(killed)
  assert a.latest_step() == b.latest_step() == steps
  pa = _restore_params(straight)
  pb = _restore_params(killed)
  for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  steps_logged = [r["step"] for r in metrics_log.read_metrics(str(killed)) if "loss" in r]
  assert steps_logged == sorted(set(steps_logged))  # no duplicates after the resume


def _restore_params(workdir):
  import orbax.checkpoint as ocp
  ckpt = checkpoints.Checkpointer(str(workdir))
  path = ckpt.directory / str(ckpt.latest_step()) / "state"
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_sigterm_saves_and_stops(data_dir, tmp_path):
  c = tiny_config(data_dir, steps=100000, log_every=10, eval_every=0, checkpoint_every=10)
  proc = _run_pretrain_subprocess(c, str(tmp_path))
  _wait_for_checkpoint(str(tmp_path), 10, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err.decode()[-2000:]  # loop.Preempted: 128 + SIGTERM
  saved = int(re.search(r"SIGTERM: saved step (\d+)", out.decode()).group(1))
  assert 10 <= saved < 100000
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == saved
