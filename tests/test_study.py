"""The label-fraction study (ee_jax/study.py) on a tiny synthetic dataset: its outputs, the
recipe chosen per run, refused configs, and a preempted run."""

import json
import os

import pytest

from configs import defaults, study_synthetic
from ee_jax import checkpoints, objectives, report, study as study_lib
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
  for r in study["runs"]:  # kappa and per-class F1 flow from each run's eval.json
    scores = json.load(open(os.path.join(r["workdir"], "eval.json")))
    assert r["kappa"] == scores["kappa"] and r["per_class_f1"] == scores["per_class_f1"]
    assert -1 <= r["kappa"] <= 1
  text = open(tmp_path / "report.md").read()
  assert "| 1/4 |" in text and "gain" in text and "| pretrained kappa | random kappa |" in text
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
  defaults.set_candidates(c, ("full", "frozen_input"))  # a plain tuple: the same for all
  run_study(c, str(tmp_path))
  study = json.load(open(tmp_path / "study.json"))
  assert len(study["runs"]) == 2
  for run in study["runs"]:
    val, test = {}, {}
    for recipe in ("full", "frozen_input"):
      rundir = tmp_path / "runs" / f"{run['name']}_{recipe}"
      val[recipe] = json.load(open(rundir / "eval_validation.json"))["miou"]
      test[recipe] = json.load(open(rundir / "eval.json"))["miou"]
      saved = json.load(open(rundir / "config.json"))
      assert saved["finetune"]["freeze_backbone"] == (recipe == "frozen_input")
      # the recipe's head_input reached the run (its architecture is the pre-training's)
      assert saved["model"]["head_input"] == ("raw3x3" if recipe == "frozen_input" else "")
    best = "frozen_input" if val["frozen_input"] > val["full"] else "full"
    assert run["recipe"] == best and run["miou"] == test[best]
    assert run["recipe_scores"]["frozen_input"] == {"validation_miou": val["frozen_input"],
                                                    "test_miou": test["frozen_input"]}
  report_text = open(tmp_path / "report.md").read()
  pre, rnd = study["runs"]
  assert (f"| 1/4 | {pre['recipe']} 1 | 0 {pre['recipe']} | {rnd['recipe']} 1 | "
          f"0 {rnd['recipe']} |") in report_text
  assert ("Candidates: pretrained `full`, `frozen_input`; random `full`, `frozen_input`."
          in report_text)


def test_each_arm_tries_its_own_candidates(labelled_data_dir, pretrained, tmp_path):
  """pretrained ('lp_ft',), random ('full', 'lp_ft'): exactly those runs, the one-candidate
  arm in <name> without a validation pass, the other in <name>_<recipe> and chosen on
  validation; the report and study.json name each run's recipe."""
  c = tiny_study_config(labelled_data_dir)
  c.study.fractions = (0.25,)
  c.study.pretrain_workdir = pretrained
  c.study.baselines = ()
  c.study.candidates = {"pretrained": ("lp_ft",), "random": ("full", "lp_ft")}
  run_study(c, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "runs")) == [
      "frac0.25_pretrained_seed0", "frac0.25_random_seed0_full", "frac0.25_random_seed0_lp_ft"]
  assert not (tmp_path / "runs" / "frac0.25_pretrained_seed0" / "eval_validation.json").exists()
  for recipe, probe in (("full", 0), ("lp_ft", 1)):   # tiny_study_config: LP-FT 1 of 2 steps
    cfg = json.load(open(tmp_path / "runs" / f"frac0.25_random_seed0_{recipe}" / "config.json"))
    assert cfg["finetune"]["linear_probe_steps"] == probe and cfg["init"]["checkpoint"] == ""
  study = json.load(open(tmp_path / "study.json"))
  pre, rnd = study["runs"]
  assert pre["recipe"] == "lp_ft" and "recipe_scores" not in pre
  val = {r: json.load(open(tmp_path / "runs" / f"frac0.25_random_seed0_{r}" /
                           "eval_validation.json"))["miou"] for r in ("full", "lp_ft")}
  assert rnd["recipe"] == ("lp_ft" if val["lp_ft"] > val["full"] else "full")
  assert rnd["workdir"].endswith(f"frac0.25_random_seed0_{rnd['recipe']}")
  row = study["summary"][0]
  assert row["gain_miou"]["per_seed_recipes"] == {"0": {"pretrained": "lp_ft",
                                                        "random": rnd["recipe"]}}
  assert row["gain_miou"]["per_seed"]["0"] == pytest.approx(100 * (pre["miou"] - rnd["miou"]))
  assert study["study"]["candidates"] == {"pretrained": ["lp_ft"], "random": ["full", "lp_ft"]}
  text = open(tmp_path / "report.md").read()
  assert "Candidates: pretrained `lp_ft`; random `full`, `lp_ft`." in text
  assert f"| 1/4 | lp_ft 1 | 0 lp_ft | {rnd['recipe']} 1 | 0 {rnd['recipe']} |" in text


def test_two_candidates_sharing_the_lp_stage_are_separate_runs(labelled_data_dir, tmp_path):
  """Two LP-FT recipes (the same head-alone stage, other backbone rates afterwards): each
  trains in its own directory on the same tiles; a rerun redoes neither."""
  c = tiny_study_config(labelled_data_dir)
  c.study.inits = ("random",)                                # no pre-training: faster
  c.study.fractions = (0.25,)
  c.study.baselines = ()
  c.study.recipes.lp_ft_slow = {"finetune": {"linear_probe_steps": 1, "backbone_lr_mult": 0.1}}
  c.study.candidates = {"random": ("lp_ft", "lp_ft_slow")}
  run_study(c, str(tmp_path))
  dirs = {r: tmp_path / "runs" / f"frac0.25_random_seed0_{r}" for r in ("lp_ft", "lp_ft_slow")}
  cfgs = {r: json.load(open(d / "config.json")) for r, d in dirs.items()}
  assert cfgs["lp_ft"]["finetune"]["linear_probe_steps"] == 1 == cfgs["lp_ft_slow"]["finetune"][
      "linear_probe_steps"]
  assert (cfgs["lp_ft"]["finetune"]["backbone_lr_mult"],
          cfgs["lp_ft_slow"]["finetune"]["backbone_lr_mult"]) == (1.0, 0.1)
  tiles = {r: json.load(open(d / "label_fraction.json"))["indices"] for r, d in dirs.items()}
  assert tiles["lp_ft"] == tiles["lp_ft_slow"]
  for d in dirs.values():
    assert checkpoints.Checkpointer(str(d)).latest_step() == 2
  stamps = {r: os.path.getmtime(d / "eval.json") for r, d in dirs.items()}
  run_study(c, str(tmp_path))
  assert {r: os.path.getmtime(d / "eval.json") for r, d in dirs.items()} == stamps


def _fake_run(rundir, test, val=None):
  """A finished run: its eval.json (and eval_validation.json) with these mIoUs."""
  os.makedirs(rundir)
  scores = {"miou": test, "oa": test + 0.1, "per_class_iou": []}
  json.dump(scores, open(os.path.join(rundir, "eval.json"), "w"))
  if val is not None:
    json.dump(dict(scores, miou=val), open(os.path.join(rundir, "eval_validation.json"), "w"))


def test_the_recipe_is_chosen_on_validation_and_the_gain_uses_randoms_choice(
    labelled_data_dir, tmp_path):
  """Finished runs (no fine-tuning): random's recipe is the best on validation even where
  the other has the better test mIoU, and the paired gain is against that choice."""
  c = tiny_study_config(labelled_data_dir)
  # seed: random's (full, lp_ft) as (validation, test) mIoU; pretrained (one recipe) test
  random_scores = {0: ((0.40, 0.50), (0.30, 0.55)),   # full chosen: the better lp_ft test unused
                   1: ((0.30, 0.58), (0.35, 0.52)),   # lp_ft chosen
                   2: ((0.45, 0.49), (0.44, 0.40))}   # full chosen
  pretrained_test = {0: 0.60, 1: 0.62, 2: 0.58}
  runs = []
  for seed, ((fv, ft), (lv, lt)) in random_scores.items():
    name = study_lib.run_name(0.25, "random", seed)
    _fake_run(tmp_path / "runs" / f"{name}_full", ft, fv)
    _fake_run(tmp_path / "runs" / f"{name}_lp_ft", lt, lv)
    rundir, result, record = study_lib._best_recipe(   # pylint: disable=protected-access
        c, str(tmp_path), name, ["full", "lp_ft"], (0.25, "random", seed, "", None))
    runs.append({"fraction": 0.25, "init": "random", "seed": seed, "miou": result["miou"],
                 "oa": result["oa"], "workdir": rundir, **record})
    runs.append({"fraction": 0.25, "init": "pretrained", "seed": seed,
                 "miou": pretrained_test[seed], "oa": pretrained_test[seed], "recipe": "lp_ft"})
  assert [r["recipe"] for r in runs if r["init"] == "random"] == ["full", "lp_ft", "full"]
  assert runs[0]["recipe_scores"]["lp_ft"] == {"validation_miou": 0.30, "test_miou": 0.55}
  gain = report.summarise(runs)[0]["gain_miou"]
  # 60 - 50, 62 - 52, 58 - 49 (not 60 - 55, 62 - 58, 58 - 49 of the best test recipe)
  assert gain["per_seed"] == pytest.approx({"0": 10.0, "1": 10.0, "2": 9.0})
  assert gain["mean"] == pytest.approx(29 / 3) and gain["within_noise"] is False
  assert gain["per_seed_recipes"]["1"] == {"pretrained": "lp_ft", "random": "lp_ft"}


def test_study_recipe_errors(labelled_data_dir, pretrained, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.pretrain_workdir = pretrained
  defaults.set_candidates(c, ("full", "fast"))
  with pytest.raises(ConfigError, match="candidates: no recipe 'fast'"):
    run_study(c, str(tmp_path))
  c.study.recipes.slow_backbone.finetune = {"backbone_lr": 0.1}
  defaults.set_candidates(c, ("full", "slow_backbone"))
  with pytest.raises(ConfigError,
                     match=r"recipes.slow_backbone: no setting 'finetune.backbone_lr'"):
    run_study(c, str(tmp_path))
  c.study.recipes.slow_backbone.finetune = {"backbone_lr_mult": 0.1}
  defaults.set_candidates(c, ("full", "lp_ft"))
  c.study.recipes.lp_ft.finetune.linear_probe_steps = 2  # of train.steps = 2
  with pytest.raises(ConfigError, match=r"recipes.lp_ft: config.finetune.linear_probe_steps "
                                        r"\(2\) must be below config.train.steps \(2\)"):
    run_study(c, str(tmp_path))
  c.study.recipes.lp_ft.finetune.linear_probe_steps = 1
  c.study.select_split = "test"
  with pytest.raises(ConfigError, match="select_split: 'test' is the test split"):
    run_study(c, str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before any work


def test_a_recipes_head_input_reaches_both_arms_over_the_pretrained_architecture():
  """`frozen_input` sets model.head_input: each run keeps it although its architecture comes
  from the pre-training (whose own head_input is ''), and the study's dtype too."""
  c = study_synthetic.get_config("smoke")
  c.model.dtype = "bfloat16"
  pretrained = dict(c.model.to_dict(), widths=(4, 8), head_input="", dtype="float32")
  for init in study_lib.INITS:
    run = study_lib.run_config(c, 0.5, init, 0, "/pretrain", pretrained, recipe="frozen_input")
    assert run.model.head_input == "raw3x3", init
    assert tuple(run.model.widths) == (4, 8) and run.model.dtype == "bfloat16", init
    assert run.finetune.freeze_backbone and run.optim.learning_rate == 5e-2, init
    plain = study_lib.run_config(c, 0.5, init, 0, "/pretrain", pretrained, recipe="lp_ft")
    assert plain.model.head_input == "", init


def test_a_recipe_may_not_change_the_architecture(labelled_data_dir, tmp_path):
  c = tiny_study_config(labelled_data_dir)
  c.study.recipes.full.model = {"features": 8}
  defaults.set_candidates(c, ("full", "lp_ft"))
  with pytest.raises(ConfigError, match=r"^config\.study\.recipes\.full: sets model\.features, "
                                        r"but the runs' architecture comes from the "
                                        r"pre-training") as refused:
    run_study(c, str(tmp_path))
  assert "\n" not in str(refused.value)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("candidates, message", [
    ({"pretrained": ("lp_ft",), "randm": ("full",)},
     r"^config\.study\.candidates: unknown initialisation\(s\) \['randm'\]; known: "
     r"\['pretrained', 'random'\]"),
    ({"pretrained": ("lp_ft",), "random": ("full", "fast")},
     r"^config\.study\.candidates\.random: no recipe 'fast' in config\.study\.recipes \(known: "),
    ({"pretrained": ("lp_ft",)},
     r"^config\.study\.candidates: no recipes for \['random'\]"),
    ({"pretrained": "lp_ft", "random": ("full",)},
     r"^config\.study\.candidates\.pretrained: 'lp_ft' is not a tuple of recipe names"),
    (("full", "full"), r"^config\.study\.candidates: recipe\(s\) \['full'\] listed more than once"),
])
def test_bad_candidates_are_one_config_error_line(labelled_data_dir, tmp_path, candidates,
                                                  message):
  c = tiny_study_config(labelled_data_dir)
  defaults.set_candidates(c, candidates)
  with pytest.raises(ConfigError, match=message) as refused:
    run_study(c, str(tmp_path))
  assert "\n" not in str(refused.value)
  assert not os.listdir(tmp_path)  # refused before any work


def test_recipes_that_label_other_tiles_are_refused(labelled_data_dir, tmp_path):
  """The arms (and baselines) are paired on the same tiles: a recipe may not change them."""
  c = tiny_study_config(labelled_data_dir)
  c.study.recipes.full.finetune = {"class_balanced": True}
  c.study.candidates = {"pretrained": ("lp_ft",), "random": ("full", "lp_ft")}
  with pytest.raises(ConfigError, match=r"^config\.study\.candidates: the recipes label "
                                        r"different tiles"):
    run_study(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_candidates_default_per_arm_but_stay_cheap_in_smoke_and_demo():
  """Default: the pretrained arm LP-FT or the frozen head beside the input, random
  initialisation those and `full` (chosen per run on validation)."""
  c = study_synthetic.get_config()
  assert c.study.candidates.to_dict() == {"pretrained": ("lp_ft", "frozen_input"),
                                          "random": ("full", "lp_ft", "frozen_input")}
  assert tuple(c.study.seeds) == (0, 1, 2, 3, 4)
  assert study_lib.recipes_by_init(c.study) == {"pretrained": ["lp_ft", "frozen_input"],
                                                "random": ["full", "lp_ft", "frozen_input"]}
  for arg in ("smoke", "demo"):
    c = study_synthetic.get_config(arg)
    assert c.study.candidates.to_dict() == {"pretrained": ("lp_ft",), "random": ("lp_ft",)}
    assert tuple(c.study.seeds) == (0,)
  c.study.candidates.random = ("full", "lp_ft")      # one arm alone (as on the command line)
  assert study_lib.recipes_by_init(c.study) == {"pretrained": ["lp_ft"],
                                                "random": ["full", "lp_ft"]}


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
