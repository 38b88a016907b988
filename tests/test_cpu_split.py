"""One XLA CPU device per core sharing each step's batch (ee_jax.runtime.host_devices.split_cpu):
the device counts chosen, the batches each device takes, and a run through launch.py that
gives one device's result on two."""

import os
import re
import subprocess
import sys

import pytest

from ee_jax.runtime import host_devices, parallel
from ee_jax.errors import ConfigError
from ee_jax.train import metrics_log

from tests.helpers import REPO


def test_devices_for_takes_the_most_cores_that_divide_the_batch():
  assert host_devices.devices_for(32, 2) == 2
  assert host_devices.devices_for(32, 8) == 8
  assert host_devices.devices_for(6, 4) == 3
  assert host_devices.devices_for(3, 2) == 1
  assert host_devices.devices_for(1, 16) == 1
  assert host_devices.devices_for(4, 0) == 1


def test_split_cpu_sets_the_devices_and_the_split(monkeypatch):
  monkeypatch.setattr(host_devices, "usable_cores", lambda: 2)
  env = {}
  assert host_devices.split_cpu(32, environ=env) == 2
  assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                 "PJRT_NPROC": str(host_devices.pool_threads(2)),
                 host_devices.SPLIT_ENV: "2"}
  assert host_devices.cpu_split(env) == 2
  # The same environment seen again (a child process of a split run): still split.
  assert host_devices.split_cpu(32, environ=env) == 2
  # An odd batch: the most devices that divide it, here one, and nothing set.
  env = {}
  assert host_devices.split_cpu(3, environ=env) == 1 and env == {}
  # Asked for explicitly.
  env = {}
  assert host_devices.split_cpu(32, 4, environ=env) == 4 and env[host_devices.SPLIT_ENV] == "4"
  env = {host_devices.SPLIT_ENV: "2"}
  assert host_devices.split_cpu(32, 1, environ=env) == 1 and env == {}
  with pytest.raises(ValueError, match="32 tiles cannot be split evenly over 3 CPU devices"):
    host_devices.split_cpu(32, 3, environ={})
  with pytest.raises(ValueError, match=">= 0"):
    host_devices.split_cpu(32, -1, environ={})


def test_a_device_count_the_user_set_is_never_split():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert host_devices.split_cpu(32, environ=env) == 1
  assert host_devices.SPLIT_ENV not in env and env["PJRT_NPROC"]
  # A split marker that does not match the user's count is not theirs: dropped.
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", host_devices.SPLIT_ENV: "2"}
  assert host_devices.split_cpu(32, environ=env) == 1 and host_devices.SPLIT_ENV not in env


def test_split_devices_share_the_configured_batch(monkeypatch):
  """This process has 2 fake CPU devices (conftest): split, they are one configured device."""
  assert parallel.device_batch(8) == 8 and parallel.global_batch(8) == 16
  monkeypatch.setenv(host_devices.SPLIT_ENV, "2")
  assert parallel.batch_split() == 2
  assert parallel.device_batch(8) == 4 and parallel.global_batch(8) == 8
  with pytest.raises(ConfigError, match="per_device_batch=3 cannot be split over the 2 CPU"):
    parallel.device_batch(3)


def _user_env() -> dict:
  """The environment without the test's fake devices: the CPU as a user's process sees it."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PJRT_NPROC", host_devices.SPLIT_ENV)}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _launch(tmp_path, mode, *flags):
  """launch.py with the smoke pre-training config and its data under tmp_path."""
  return subprocess.run(
      [sys.executable, "launch.py", f"--mode={mode}",
       "--config=configs/pretrain_synthetic.py:smoke",
       f"--config.data.data_dir={tmp_path / 'tfds'}", *flags],
      cwd=REPO, env=_user_env(), capture_output=True, text=True, timeout=600)


def _pretrain(tmp_path, name, cpu_devices):
  """One pre-training step of the smoke model through launch.py on `cpu_devices`."""
  out = _launch(tmp_path, "pretrain", f"--workdir={tmp_path / name}", "--config.train.steps=1",
                "--config.train.log_every=1", "--config.train.eval_every=0",
                f"--cpu_devices={cpu_devices}")
  assert out.returncode == 0, out.stderr[-2000:]
  said = re.search(r"(\d+) devices.*?, global batch (\d+)", out.stdout + out.stderr)
  assert said, (out.stdout + out.stderr)[-2000:]
  return tuple(map(int, said.groups())), metrics_log.read_metrics(str(tmp_path / name))


def test_two_cpu_devices_train_as_one(tmp_path):
  build = _launch(tmp_path, "build")
  assert build.returncode == 0, build.stderr[-2000:]
  (devices1, batch1), m1 = _pretrain(tmp_path, "one", 1)
  (devices2, batch2), m2 = _pretrain(tmp_path, "two", 2)
  assert (devices1, batch1) == (1, 4) and (devices2, batch2) == (2, 4)  # same global batch
  first1, first2 = m1[0], m2[0]
  assert first1["step"] == first2["step"] == 1
  # Step 1's loss is the initial params' loss on the same 4 tiles, same augmentation (keys
  # per example, not per device). Only summation order differs: each device sums its 2
  # tiles, then the mean over devices; per layer a re-associated fp32 dot product is off by
  # a few eps relative, over the model's ~20 layers some 1e-6. A device-dependent loss
  # (a batch statistic, a key per device) or half the batch is a different sample mean:
  # off by the spread of per-tile losses over 4 tiles, far above 2e-5.
  # Seen: 7.5e-8 relative (about one ulp). The gradient norm is that of the gradient
  # averaged over all 4 tiles; a device's own 2-tile gradient has another norm.
  assert first2["loss"] == pytest.approx(first1["loss"], rel=2e-5)
  assert first2["grad_norm"] == pytest.approx(first1["grad_norm"], rel=2e-5)


def test_a_count_that_does_not_divide_the_batch_is_one_error_line(tmp_path):
  out = _launch(tmp_path, "pretrain", f"--workdir={tmp_path / 'w'}", "--cpu_devices=3")
  assert out.returncode == 1
  assert out.stderr.strip() == ("error: --cpu_devices=3: a batch of 4 tiles cannot be split "
                                "evenly over 3 CPU devices; use a per-device batch that is a "
                                "multiple of 3")
  assert not (tmp_path / "w").exists()
