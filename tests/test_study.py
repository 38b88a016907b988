"""The label-fraction study (ee_jax/study.py) on a tiny synthetic dataset: its outputs, the
recipe chosen per run, refused configs, and a preempted run."""

import json
import os

import pytest

from configs import study_synthetic
from ee_jax import checkpoints, objectives, report
from ee_jax.errors import ConfigError
from ee_jax.study import run_study
from ee_jax.train import loop
from tests.helpers import TINY_LABELLED, tiny_study_config


def test_smoke_study_writes_report_json_and_plot(labelled_data_dir, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  summary = run_study(c, str(tmp_path))
  assert [row["fraction"] for row in summary] == [1.0, 0.25]
  for name in ("report.md", "study.json", "label_fraction.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  study = json.load(open(tmp_path / "study.json"))
  assert study["complete"] and len(study["runs"]) == 4
  text = open(tmp_path / "report.md").read()
  assert "| 1/4 |" in text and "gain" in text
  with open(tmp_path / "label_fraction.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The pretrained arm is named by the objective its checkpoint was trained with.
  meta = checkpoints.load_params(str(tmp_path / "pretrain"))[1]
  used = objectives.active(meta["config"]["loss"])
  assert study["pretrain_objective"] == used
  assert f"(objective: {report.objective_name(used)})" in text
  # Resumable: a second call redoes nothing (the runs' eval.json are reused).
  stamp = os.path.getmtime(tmp_path / "runs" / study["runs"][0]["name"] / "eval.json")
  run_study(c, str(tmp_path))
  assert os.path.getmtime(tmp_path / "runs" / study["runs"][0]["name"] / "eval.json") == stamp


def test_study_chooses_each_runs_recipe_on_validation(labelled_data_dir, pretrained, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.fractions = (0.25,)
  c.study.pretrain_workdir = pretrained
  c.study.candidates = ("full", "frozen")
  run_study(c, str(tmp_path))
  study = json.load(open(tmp_path / "study.json"))
  assert len(study["runs"]) == 2
  for run in study["runs"]:
    val, test = {}, {}
    for recipe in ("full", "frozen"):
      rundir = tmp_path / "runs" / f"{run['name']}_{recipe}"
      val[recipe] = json.load(open(rundir / "eval_validation.json"))["miou"]
      test[recipe] = json.load(open(rundir / "eval.json"))["miou"]
      assert json.load(open(rundir / "config.json"))["finetune"]["freeze_backbone"] == (
          recipe == "frozen")
    best = "frozen" if val["frozen"] > val["full"] else "full"
    assert run["recipe"] == best and run["miou"] == test[best]
    assert run["recipe_scores"]["frozen"] == {"validation_miou": val["frozen"],
                                              "test_miou": test["frozen"]}
  report_text = open(tmp_path / "report.md").read()
  assert f"- 1/4, pretrained: {study['runs'][0]['recipe']} x1" in report_text


def test_study_recipe_errors(labelled_data_dir, pretrained, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.pretrain_workdir = pretrained
  c.study.candidates = ("full", "fast")
  with pytest.raises(ConfigError, match="candidates: no recipe 'fast'"):
    run_study(c, str(tmp_path))
  c.study.recipes.slow_backbone.finetune = {"backbone_lr": 0.1}
  c.study.candidates = ("full", "slow_backbone")
  with pytest.raises(ConfigError,
                     match=r"recipes.slow_backbone: no setting 'finetune.backbone_lr'"):
    run_study(c, str(tmp_path))
  c.study.recipes.slow_backbone.finetune = {"backbone_lr_mult": 0.1}
  c.study.candidates = ("full", "lp_ft")
  c.study.recipes.lp_ft.finetune.linear_probe_steps = 2  # of train.steps = 2
  with pytest.raises(ConfigError, match=r"recipes.lp_ft: config.finetune.linear_probe_steps "
                                        r"\(2\) must be below config.train.steps \(2\)"):
    run_study(c, str(tmp_path))
  c.study.recipes.lp_ft.finetune.linear_probe_steps = 1
  c.study.select_split = "test"
  with pytest.raises(ConfigError, match="select_split: 'test' is the test split"):
    run_study(c, str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before any work


def test_a_preempted_run_stops_the_study_and_is_not_evaluated(labelled_data_dir, tmp_path,
                                                              monkeypatch):
  """SIGTERM in a study's run: the checkpoint is saved, no eval.json is written and the
  study does not go on to the next run (it used to evaluate the stopped run as done)."""
  monkeypatch.setattr(loop.StopFlag, "should_stop", lambda self, step: step >= 2)
  c = study_synthetic.get_config("smoke")
  c.data.data_dir = str(labelled_data_dir)
  c.data.config_name = "tiny_labelled"
  c.data.builder.update(TINY_LABELLED)
  c.study.pretrain_workdir = ""
  c.study.inits = ("random",)
  with pytest.raises(loop.Preempted) as stopped:
    run_study(c, str(tmp_path))
  assert stopped.value.code == 143
  runs = sorted(os.listdir(tmp_path / "runs"))
  assert len(runs) == 1, runs                                 # the study stopped there
  assert not (tmp_path / "runs" / runs[0] / "eval.json").exists()
  assert checkpoints.Checkpointer(str(tmp_path / "runs" / runs[0])).latest_step() == 2
  assert not (tmp_path / "study.json").exists()
