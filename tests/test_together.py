"""Runs fine-tuned together as one step (ee_jax/train/together.py, stacked.py) equal the
same runs fine-tuned alone, resume like them, and fall back to one after the other."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ee_jax import checkpoints
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError
from ee_jax.study import run_study, trains_together
from ee_jax.train import loop, metrics_log, stacked, together
from ee_jax.train.finetune import finetune
from tests.test_finetune import _tiny_study_config, data_dir, pretrained  # noqa: F401
from tests.test_finetune import tiny_finetune_config

STEPS = 6


def _toy_step(state, batch, key, scale):
  """A step with what the fine-tuning step has: a psum over devices, a per-run key and a
  per-run constant, a state carried across steps."""
  noise = jax.random.normal(key, state["w"].shape, state["w"].dtype)
  grad = jax.lax.psum(batch.T @ (batch @ state["w"]) * scale, parallel.AXIS)
  new = {"w": state["w"] - 0.1 * grad + 1e-3 * noise, "n": state["n"] + 1}
  return new, {"norm": jnp.linalg.norm(new["w"])}


@pytest.mark.parametrize("width", [0, 1, 2])   # all vectorised; one at a time; 2 + a rest
def test_over_runs_equals_each_run_alone(width):
  """In float64 the stacked step of 3 runs gives each run's own result to ~1e-15: the
  same operations on the same numbers, only batched (vmap) or looped (lax.map)."""
  n_dev = jax.local_device_count()
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    states = [{"w": rng.normal(size=(5, 3)), "n": np.int64(i)} for i in range(3)]
    batches = [rng.normal(size=(n_dev, 4, 5)) for _ in range(3)]
    keys = [np.asarray(jax.random.PRNGKey(i)) for i in range(3)]
    scales = [np.float64(0.5 + i) for i in range(3)]
    alone = parallel.pmap_step(_toy_step)
    expected = [jax.device_get(parallel.unreplicate(alone(
        parallel.replicate(s), b, parallel.replicate(k), parallel.replicate(c))))
        for s, b, k, c in zip(states, batches, keys, scales)]
    joint = parallel.pmap_step(stacked.over_runs(_toy_step, width))
    got = jax.device_get(parallel.unreplicate(joint(
        parallel.replicate(stacked.stack(states)), np.stack(batches, axis=1),
        parallel.replicate(stacked.stack(keys)), parallel.replicate(stacked.stack(scales)))))
    for i, (state, metrics) in enumerate(expected):
      mine = stacked.unstack(got, i)
      np.testing.assert_allclose(mine[0]["w"], state["w"], rtol=1e-13, atol=1e-15)
      assert mine[0]["n"] == state["n"] == i + 1
      np.testing.assert_allclose(mine[1]["norm"], metrics["norm"], rtol=1e-13)
    # The runs really differ: a mix-up of runs would be far outside the tolerance.
    assert np.abs(expected[0][0]["w"] - expected[1][0]["w"]).max() > 1e-2
  with pytest.raises(ValueError, match="vmap_width"):
    stacked.over_runs(_toy_step, -1)


def _group(data_dir, pretrained, steps=STEPS, **train):  # noqa: F811
  """A study's group: one pretrained and two random runs of 1/4 of the tiles with LP-FT,
  every run on the pre-trained architecture, each with its own seed and tiles."""
  meta = checkpoints.load_params(pretrained)[1]
  configs = []
  for init, seed in (("pretrained", 0), ("random", 1), ("random", 2)):
    c = tiny_finetune_config(data_dir, steps=steps, label_fraction=0.25, fraction_seed=seed,
                             linear_probe_steps=2)
    c.seed = seed
    c.model = ml_collections.ConfigDict(meta["model"])
    c.init.checkpoint = pretrained if init == "pretrained" else ""
    c.init.allow_stats_mismatch = True
    c.train.log_every = 1
    c.train.update(train)
    configs.append(c)
  return configs


def _losses(workdir):
  return np.array([r["loss"] for r in metrics_log.read_metrics(str(workdir)) if "loss" in r])


def _params(workdir):
  return jax.tree.leaves(checkpoints.load_params(str(workdir))[0])


@pytest.fixture(scope="module")
def alone(data_dir, pretrained, tmp_path_factory):  # noqa: F811
  """The group's runs fine-tuned one by one: (workdirs, results)."""
  root = tmp_path_factory.mktemp("alone")
  dirs = [root / f"alone{i}" for i in range(3)]
  return dirs, [finetune(c, str(d)) for c, d in zip(_group(data_dir, pretrained), dirs)]


@pytest.mark.parametrize("width", [0, 1])
def test_runs_trained_together_equal_the_runs_alone(data_dir, pretrained, alone, tmp_path,  # noqa: F811
                                                    width):
  """Each run keeps its own tiles, keys, initialisation and normalisation: its losses,
  parameters and test result are those of the run alone, to float32 rounding (the loss
  is a float32 sum over ~1e3 pixels: ~1e-6 relative; six AdamW steps of lr 1e-3 move a
  weight by at most 6e-3, so rounding-level gradient differences stay far below 1e-4)."""
  alone_dirs, alone_results = alone
  dirs = [str(tmp_path / f"together{i}") for i in range(3)]
  joint = together.finetune_together(_group(data_dir, pretrained), dirs, vmap_width=width)
  for i in range(3):
    a, b = alone_dirs[i], tmp_path / f"together{i}"
    assert len(_losses(b)) == STEPS
    np.testing.assert_allclose(_losses(b), _losses(a), rtol=1e-5)
    for x, y in zip(_params(b), _params(a)):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)
    tiles = [json.load(open(d / "label_fraction.json")) for d in (a, b)]
    assert tiles[0] == tiles[1]
    assert abs(joint[i]["test_miou"] - alone_results[i]["test_miou"]) < 1e-3
    assert json.load(open(b / "eval.json"))["checkpoint_step"] == STEPS
  # The three runs are distinct (so a swap of runs could not pass the checks above).
  l0, l1, l2 = (_losses(d) for d in alone_dirs)
  assert min(np.abs(l0 - l1).max(), np.abs(l1 - l2).max()) > 1e-2


def test_a_group_stopped_mid_way_resumes_to_the_uninterrupted_result(
    data_dir, pretrained, tmp_path, monkeypatch):  # noqa: F811
  """SIGTERM inside the group (in the LP-FT head phase): every run saves that step and no
  eval.json; the same call again resumes the group and ends where an uninterrupted group
  ends."""
  configs = _group(data_dir, pretrained, checkpoint_every=1, keep_checkpoints=10)
  straight = [str(tmp_path / f"straight{i}") for i in range(3)]
  together.finetune_together(configs, straight, vmap_width=0)
  cut = [str(tmp_path / f"cut{i}") for i in range(3)]
  with monkeypatch.context() as m:
    m.setattr(loop.StopFlag, "should_stop", lambda self, step: step >= 2)
    with pytest.raises(loop.Preempted):
      together.finetune_together(configs, cut, vmap_width=0)
  for d in cut:
    assert checkpoints.Checkpointer(d).latest_step() == 2
    assert not os.path.exists(os.path.join(d, "eval.json"))
  together.finetune_together(configs, cut, vmap_width=0)
  for a, b in zip(straight, cut):
    for x, y in zip(_params(a), _params(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_losses(b), _losses(a), rtol=1e-6)


def test_runs_that_cannot_share_a_step_are_trained_one_after_the_other(
    data_dir, pretrained, tmp_path, capsys):  # noqa: F811
  configs = _group(data_dir, pretrained, steps=3)
  assert together.why_not_together(configs) is None
  configs[1].train.steps = 4
  assert "train.steps" in together.why_not_together(configs)
  configs[1].train.steps = 3
  configs[2].train.eval_every = 1
  assert "validation" in together.why_not_together(configs)
  configs[2].train.eval_every = 0
  # Runs resumed from different steps: set up, found unequal, trained alone from there.
  dirs = [str(tmp_path / f"run{i}") for i in range(3)]
  finetune(configs[0], dirs[0])
  os.remove(os.path.join(dirs[0], "eval.json"))
  capsys.readouterr()
  results = together.finetune_together(configs, dirs)
  assert "one after the other: their checkpoints are at different steps" in capsys.readouterr().out
  assert all(os.path.exists(os.path.join(d, "eval.json")) for d in dirs)
  assert len(results) == 3


def test_study_together_gives_the_results_of_the_study_run_by_run(
    data_dir, pretrained, tmp_path):  # noqa: F811
  results = {}
  for how in ("always", "never"):
    c = _tiny_study_config(data_dir)
    c.study.fractions = (0.25,)
    c.study.seeds = (0, 1)
    c.study.pretrain_workdir = pretrained
    c.study.train_together = how
    run_study(c, str(tmp_path / how))
    results[how] = json.load(open(tmp_path / how / "study.json"))["runs"]
  assert len(results["always"]) == 4
  for a, b in zip(results["always"], results["never"]):
    assert a["name"] == b["name"]
    assert abs(a["miou"] - b["miou"]) < 1e-3
  for key, value in (("vmap_width", -1), ("train_together", "yes")):
    bad = c.copy_and_resolve_references()
    bad.study[key] = value
    with pytest.raises(ConfigError, match=f"config.study.{key}"):
      run_study(bad, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")
  shutil.rmtree(tmp_path / "always")


def test_auto_trains_together_on_accelerators_only():
  """'auto' keeps CPU studies run by run: both stacked forms measured slower there."""
  st = ml_collections.ConfigDict({"train_together": "auto"})
  assert not trains_together(st, "cpu")
  assert trains_together(st, "gpu") and trains_together(st, "tpu")
  st.train_together = "always"
  assert trains_together(st, "cpu")
  st.train_together = "never"
  assert not trains_together(st, "gpu")
