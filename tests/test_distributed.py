"""Two real processes on localhost (jax.distributed, CPU + gloo, one device each) against one
process with two fake devices, on the same global batches: pre-training (steps, checkpoints,
resume, contrastive evaluation) and fine-tuning (steps, confusion-matrix evaluation) agree.

Per-device batch 3 on 2 devices (global 6) pads the last evaluation batch unevenly: of the
16 validation tiles, process 0 holds 3 real ones of the last global batch and process 1
one, and of the 20 test tiles process 0 holds both real ones and process 1 none.

All three run this file as a script, concurrently, with the same cheap XLA CPU compile
options (compiling dominates; the semantics under test do not depend on them):
  python tests/test_distributed.py single DATA WORKDIR OUT
  python tests/test_distributed.py multi DATA WORKDIR OUT PORT PROCESS_ID
  python tests/test_distributed.py endless DATA WORKDIR OUT PORT PROCESS_ID  # until SIGTERM
  python tests/test_distributed.py fail_build DATA WORKDIR OUT PORT PROCESS_ID

A slow test (`make test-slow`) sends SIGTERM to one of two processes: both must stop and
save at the same step (JAX's preemption sync point; see ee_jax.train.loop.StopFlag).
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Across processes a collective also waits for the slower process to finish compiling its
# step; beside CPU-bound work (.ci/run's second pass) that can pass XLA's default 40 s (then
# it aborts the process): wait up to 5 minutes, the time the test gives the processes anyway.
PATIENT = ("--xla_cpu_collective_call_terminate_timeout_seconds=300 "
           "--xla_cpu_collective_timeout_seconds=300")
if __name__ == "__main__":  # before JAX is imported: 2 fake devices (single) or 1 (multi)
  sys.path.insert(0, REPO)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                             f"{2 if sys.argv[1] == 'single' else 1} {FAST_COMPILE} {PATIENT}")
  from ee_jax.runtime import host_devices  # imports no JAX
  host_devices.configure()  # 2 fake devices: enough XLA client threads (see there)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ee_jax import checkpoints
from ee_jax.runtime import distributed  # noqa: E402
from ee_jax.errors import ConfigError  # noqa: E402

TIMING_KEYS = ("time", "tiles_per_s", "pixels_per_s")


def _configs(data_dir):
  """(pre-training config, fine-tuning config) on the tiny labelled dataset."""
  from tests.helpers import tiny_finetune_config, tiny_labelled_pretrain_config  # noqa: E501 pylint: disable=import-outside-toplevel
  pre = tiny_labelled_pretrain_config(str(data_dir), steps=4)
  pre.data.per_device_batch = 3
  pre.train.update(log_every=2, eval_every=4, checkpoint_every=2, eval_batches=0)
  fine = tiny_finetune_config(str(data_dir), steps=2)
  fine.data.per_device_batch = 3
  fine.train.log_every = 1
  return pre, fine


def _checksum(tree) -> list[float]:
  return [float(np.sum(np.asarray(x, np.float64))) for x in jax.tree_util.tree_leaves(tree)]


def run_both(data_dir, workdir) -> dict:
  """Pre-trains and fine-tunes under `workdir`; what every process reports."""
  from ee_jax.train.finetune import finetune  # pylint: disable=import-outside-toplevel
  from ee_jax.train.pretrain import pretrain  # pylint: disable=import-outside-toplevel
  pre, fine = _configs(data_dir)
  pre_dir = os.path.join(workdir, "pretrain")
  out = {"pretrain": pretrain(pre, pre_dir)}
  # Every process restores: the whole train state (a finished run resumes at its last step
  # and trains no further), and the params alone, as fine-tuning from it would.
  out["resumed"] = pretrain(pre, pre_dir)
  params, meta = checkpoints.load_params(pre_dir)
  out["pretrain_params"] = _checksum(params)
  out["pretrain_kind"] = meta["kind"]
  out["finetune"] = finetune(fine, os.path.join(workdir, "finetune"))
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _close(a, b, where):
  assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
  for k in a:
    if k in TIMING_KEYS:
      continue
    if isinstance(a[k], dict):
      _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a[k], (list, float, int)) and a[k] is not None:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{where}.{k}")
    else:
      assert a[k] == b[k], (where, k)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from ee_jax.data import datasets  # pylint: disable=import-outside-toplevel
  path = tmp_path_factory.mktemp("tfds")
  datasets.prepare(_configs(path)[0].data, log=lambda *a: None)
  return path


def test_two_processes_equal_one_process_with_two_devices(data_dir, tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=REPO)
  script = [sys.executable, os.path.abspath(__file__)]
  multi, ref = tmp_path / "multi", tmp_path / "single"
  commands = [[*script, "single", str(data_dir), str(ref), str(tmp_path / "single.json")]]
  commands += [[*script, "multi", str(data_dir), str(multi), str(tmp_path / f"multi{i}.json"),
                str(port), str(i)] for i in range(2)]
  procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  try:
    logs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for c, p, log in zip(commands, procs, logs):
    assert p.returncode == 0, f"{' '.join(c[2:])} failed:\n{log[-3000:]}"
  single = json.load(open(tmp_path / "single.json"))
  assert single["process"] == {"process_index": 0, "process_count": 1, "local_devices": 2,
                               "devices": 2}
  single = single["result"]
  for i in range(2):
    out = json.load(open(tmp_path / f"multi{i}.json"))
    assert out["process"] == {"process_index": i, "process_count": 2, "local_devices": 1,
                              "devices": 2}
    _close(out["result"], single, f"process {i}")
  # Pre-training evaluation ran over the padded last batch; fine-tuning's test split too.
  assert np.isfinite(single["pretrain"]["eval_loss"])
  assert single["finetune"]["test_miou"] is not None

  # Only process 0 wrote logs and reports, once each.
  for run in ("pretrain", "finetune"):
    got = (multi / run / "metrics.jsonl").read_text().splitlines()
    want = (ref / run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in got] == [json.loads(r)["step"] for r in want]
    assert (multi / run / "config.json").exists()
  for line in ("Model: ", "Fine-tuning: ", "Checkpoints: "):  # summary lines: process 0 only
    assert line in logs[1] and line not in logs[2], line
  multi_eval = json.load(open(multi / "finetune" / "eval.json"))
  single_eval = json.load(open(ref / "finetune" / "eval.json"))
  assert multi_eval["confusion_matrix"] == single_eval["confusion_matrix"]
  assert multi_eval["num_pixels"] == single_eval["num_pixels"] > 0
  # The checkpoints the two processes saved together hold the single process's params.
  for run in ("pretrain", "finetune"):
    a, meta = checkpoints.load_params(str(multi / run))
    b, _ = checkpoints.load_params(str(ref / run))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert checkpoints.Checkpointer(str(multi / "pretrain")).latest_step() == 4


def test_resolve_reads_flags_then_environment(monkeypatch):
  for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM_PROCESSES,
               distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  # Nothing given: everything left to JAX's cluster detection (TPU VM, SLURM, Open MPI).
  assert distributed.resolve() == {"coordinator_address": None, "num_processes": None,
                                   "process_id": None}
  monkeypatch.setenv(distributed.ENV_ADDRESS, "10.0.0.1:1234")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
  assert distributed.resolve() == {"coordinator_address": "10.0.0.1:1234",
                                   "num_processes": 4, "process_id": 3}
  assert distributed.resolve("h:1", 2, 0) == {"coordinator_address": "h:1",
                                             "num_processes": 2, "process_id": 0}
  with pytest.raises(ConfigError, match="not in"):
    distributed.resolve(process_id=4)
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES"):
    distributed.resolve()


def test_single_process_helpers_are_no_ops():
  assert not distributed.is_multiprocess() and distributed.is_primary()
  distributed.barrier("nothing to wait for")
  assert distributed.primary_first(lambda: 7, "x") == 7
  assert distributed.reached_preemption_sync_point(3) is False


@contextlib.contextmanager
def _two_processes(mode, data_dir, workdir):
  """Processes 0 and 1 of a localhost jax.distributed run of this file in `mode`; whatever
  is still running at the end of the block is killed."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=REPO)
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), mode, str(data_dir), str(workdir),
       str(workdir / f"out{i}.json"), str(port), str(i)], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def test_a_build_failing_on_process_0_stops_every_process(tmp_path):
  # Process 0 fails in primary_first (a dataset build, say): process 1 must not wait for
  # it at the barrier forever but stop with an error naming process 0.
  with _two_processes("fail_build", tmp_path, tmp_path) as procs:
    logs = [p.communicate(timeout=120)[0] for p in procs]
  assert procs[0].returncode != 0 and "ConfigError: no such dataset" in logs[0], logs[0][-2000:]
  assert procs[1].returncode != 0, logs[1][-2000:]
  assert "build: failed on process 0" in logs[1], logs[1][-2000:]
  assert not (tmp_path / "out1.json").exists()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(data_dir, tmp_path):
  with _two_processes("endless", data_dir, tmp_path) as procs:
    metrics = tmp_path / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      assert time.time() < deadline and all(p.poll() is None for p in procs), "no progress"
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only, as a preempted host would be
    logs = [p.communicate(timeout=120)[0] for p in procs]
  saved = []
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 143, f"process {i}:\n{log[-3000:]}"  # loop.Preempted
    saved += [int(m) for m in re.findall(r"SIGTERM: saved step (\d+)", log)]
  assert len(saved) == 2 and saved[0] == saved[1], saved
  assert checkpoints.Checkpointer(str(tmp_path / "pretrain")).latest_step() == saved[0]


def _main(mode, data_dir, workdir, out_path, port=None, process_id=None):
  if mode != "single":
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
  if mode == "fail_build":
    def build():
      raise ConfigError("no such dataset")
    distributed.primary_first(build, "build")
    open(out_path, "w").close()  # not reached on either process
    return
  if mode == "endless":  # until SIGTERM
    from ee_jax.train.pretrain import pretrain  # pylint: disable=import-outside-toplevel
    pre, _ = _configs(data_dir)
    pre.train.update(steps=10 ** 6, log_every=2, eval_every=0, checkpoint_every=10 ** 6)
    pretrain(pre, os.path.join(workdir, "pretrain"))
    return
  result = run_both(data_dir, workdir)
  with open(out_path, "w") as f:
    json.dump({"process": distributed.describe(), "result": result}, f)


if __name__ == "__main__":
  _main(*sys.argv[1:])
