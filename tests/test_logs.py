"""What runs print and log: TensorBoard scalars, progress on terminals and in log files,
no TFDS noise (issue 15)."""

import glob
import io
import json
import os
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from ee_jax.inference import engine
from ee_jax.train import metrics_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Terminal(io.StringIO):
  def isatty(self):
    return True


def read_events(workdir):
  """Every Event of the TensorBoard event files in `workdir`, in file order (TFRecord
  framing: uint64 length, uint32 CRC, payload, uint32 CRC)."""
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + n])
      events.append(event)
      pos += 12 + n + 4
  return events


def scalars(events):
  return [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
  out = io.StringIO()
  log = metrics_log.MetricsLog(str(tmp_path), 4, enabled=True, stream=out)
  for step in range(1, 5):
    log.advance(step)
    if step % 2 == 0:
      log.write(step, {"loss": 10.0 / step, "top1": 0.25 * step, "per_class": [1, 2]})
  log.write(4, {"miou": 0.5}, prefix="eval_")
  log.close()
  records = metrics_log.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4, 4]
  got = scalars(read_events(str(tmp_path)))
  # Scalars only (the list is not one), at their steps, float32 as TensorBoard stores them.
  assert got == [(2, "loss", 5.0), (2, "top1", 0.5), (4, "loss", 2.5), (4, "top1", 1.0),
                 (4, "eval_miou", 0.5)]
  # Not a terminal: one plain line per logged step, no carriage returns or escapes.
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  assert text.splitlines() == ["step 2/4 loss=5 top1=0.5", "step 4/4 loss=2.5 top1=1",
                               "step 4/4 eval_miou=0.5"]


def test_resume_purges_tensorboard_events_past_the_checkpoint(tmp_path):
  log = metrics_log.MetricsLog(str(tmp_path), 6, enabled=True, stream=io.StringIO())
  for step in (1, 2, 3):
    log.write(step, {"loss": float(step)})
  log.close()
  # Killed after step 3, resumed from the checkpoint of step 2.
  log = metrics_log.MetricsLog(str(tmp_path), 6, enabled=True, stream=io.StringIO())
  log.truncate_after(2)
  log.write(3, {"loss": 30.0})
  log.close()
  assert [(r["step"], r["loss"]) for r in metrics_log.read_metrics(str(tmp_path))] == [
      (1, 1.0), (2, 2.0), (3, 30.0)]
  events = read_events(str(tmp_path))
  starts = [e.step for e in events if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [3]   # TensorBoard drops the earlier events at steps >= 3
  assert scalars(events)[-1] == (3, "loss", 30.0)


def test_disabled_logger_writes_nothing(tmp_path):
  out = io.StringIO()
  log = metrics_log.MetricsLog(str(tmp_path), 2, enabled=False, stream=out)
  log.advance(1)
  log.write(1, {"loss": 1.0})
  log.say("hello")
  log.close()
  assert os.listdir(tmp_path) == [] and out.getvalue() == ""
  # A fact about this host (it was preempted, say) is printed by every process.
  log.say("stopped", every_process=True)
  assert out.getvalue() == "stopped\n" and os.listdir(tmp_path) == []


def test_terminal_gets_a_bar_and_eval_lines(tmp_path):
  out = Terminal()
  log = metrics_log.MetricsLog(str(tmp_path), 10, enabled=True, stream=out)
  for step in range(1, 11):
    log.advance(step)
    if step % 5 == 0:
      log.write(step, {"loss": 1.0})
  log.write(10, {"miou": 0.75}, prefix="eval_")
  log.close()
  text = out.getvalue()
  assert "10/10" in text and "\r" in text
  assert "step 10/10 eval_miou=0.75\n" in text


def test_scene_progress_lines_in_logs_and_a_bar_on_terminals():
  out = io.StringIO()
  p = engine.Progress("embed", 1947, 1933, stream=out)
  for rows in range(128, 1947, 128):
    p.update(rows)
  p.update(1947)
  lines = out.getvalue().splitlines()
  assert [x.split(",")[0] for x in lines] == [
      "embed: 512/1947 rows (25%)", "embed: 1024/1947 rows (50%)",
      "embed: 1536/1947 rows (75%)", "embed: 1947/1947 rows (100%)"]
  term = Terminal()
  p = engine.Progress("embed", 100, 10, stream=term)
  p.update(50)
  p.update(100)
  assert "100/100" in term.getvalue() and "\r" in term.getvalue()
  quiet = io.StringIO()
  p = engine.Progress("embed", 100, 10, enabled=False, stream=quiet)
  p.update(100)
  assert quiet.getvalue() == ""


def test_build_log_has_no_tfds_noise(tmp_path):
  """A build through launch.py, output to pipes (a log file): no absl 'custom data
  configuration' warning, no 'Downloading and preparing' when nothing is downloaded, no
  progress bars."""
  proc = subprocess.run(
      [sys.executable, "launch.py", "--mode=build",
       "--config=configs/pretrain_synthetic.py:smoke",
       f"--config.data.data_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "split train" in proc.stdout
  both = proc.stdout + proc.stderr
  for noise in ("Using custom data configuration", "Downloading and preparing",
                "downloaded and prepared", "\r", "\x1b"):
    assert noise not in both, (noise, both[-2000:])
  assert proc.stderr == ""
  info = glob.glob(str(tmp_path / "synthetic_landcover" / "smoke" / "*" / "dataset_info.json"))
  assert len(info) == 1 and json.load(open(info[0]))["name"] == "synthetic_landcover"
