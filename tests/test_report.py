"""The study report's numbers on hand-computed study results: paired gains, noise, 1 seed."""

import json
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from configs import defaults, study_synthetic  # noqa: E402
from ee_jax import report  # noqa: E402


def _runs(table):
  """{(fraction, init): [mIoU per seed]} -> run records (OA = mIoU + 0.1)."""
  return [{"name": f"{f}_{init}_{seed}", "fraction": f, "init": init, "seed": seed,
           "miou": m, "oa": m + 0.1, "per_class_iou": []}
          for (f, init), values in table.items() for seed, m in values]


# Seeds 0-2 at both fractions; at 1/4 an unpaired random run (seed 3) must not enter the gain.
RUNS = _runs({
    (1.0, "pretrained"): [(0, 0.50), (1, 0.60), (2, 0.70)],
    (1.0, "random"): [(2, 0.66), (0, 0.45), (1, 0.50)],      # order must not matter
    (0.25, "pretrained"): [(0, 0.40), (1, 0.30), (2, 0.35)],
    (0.25, "random"): [(0, 0.38), (1, 0.33), (2, 0.33), (3, 0.90)],
})


def test_paired_gains_hand_computed():
  rows = {row["fraction"]: row for row in report.summarise(RUNS)}
  g = rows[1.0]["gain_miou"]  # gains 5, 10, 4 points
  assert g["per_seed"] == pytest.approx({"0": 5.0, "1": 10.0, "2": 4.0})
  assert g["mean"] == pytest.approx(19 / 3)
  assert g["std"] == pytest.approx(math.sqrt(31 / 3))  # squared deviations 62/9 over n-1=2
  assert g["se"] == pytest.approx(math.sqrt(31 / 9))
  assert g["n"] == 3 and g["within_noise"] is False  # 6.33 >= 2 x 1.86
  g = rows[0.25]["gain_miou"]  # gains 2, -3, 2 points; seed 3 has no pretrained partner
  assert g["per_seed"] == pytest.approx({"0": 2.0, "1": -3.0, "2": 2.0})
  assert g["mean"] == pytest.approx(1 / 3) and g["std"] == pytest.approx(math.sqrt(25 / 3))
  assert g["n"] == 3 and g["within_noise"] is True   # 0.33 < 2 x 1.67
  assert rows[0.25]["random"]["miou"]["n"] == 4        # the unpaired run counts for its arm
  assert rows[1.0]["gain_oa"]["mean"] == pytest.approx(19 / 3)  # OA = mIoU + 0.1: same gains
  # The paired spread (3.2) is far below the unpaired arms' (10.0 and 10.8).
  assert rows[1.0]["pretrained"]["miou"]["std"] == pytest.approx(10.0)


def test_report_and_study_json_carry_the_paired_gains(tmp_path):
  c = study_synthetic.get_config("smoke")
  c.study.seeds = (0, 1, 2)
  summary = report.summarise(RUNS)
  report.write_study_json(str(tmp_path), RUNS, c, "/pre", complete=True)
  report.write_report(str(tmp_path), summary, c, "/pre")
  study = json.load(open(tmp_path / "study.json"))
  assert study["summary"][0]["gain_miou"]["mean"] == pytest.approx(19 / 3)
  text = open(tmp_path / "report.md").read()
  assert "| 1 | 60.0 ± 10.0 | 53.7 ± 11.0 | +6.3 ± 3.2 | beyond noise (3 seeds) |" in text
  assert "| 1/4 | 35.0 ± 5.0 | 48.5 ± 27.8 | +0.3 ± 2.9 | within noise |" in text
  assert "|mean| < 2 x its standard error" in text


def test_kappa_beside_miou_and_oa_and_n_a_where_eval_json_predates_it(tmp_path):
  runs = [{**r, "kappa": r["miou"] - 0.2} for r in RUNS]
  linear = {"name": "l", "fraction": 1.0, "baseline": "linear", "seed": 0, "miou": 0.4,
            "oa": 0.5, "kappa": 0.25, "per_class_iou": [], "indices": []}
  summary = report.summarise(runs, [linear])
  rows = {row["fraction"]: row for row in summary}
  assert rows[1.0]["pretrained"]["kappa"]["mean"] == pytest.approx(40.0)  # 0.3, 0.4, 0.5
  # random: 46, 25, 30 points; deviations 37/3, -26/3, -11/3 -> variance 2166/9 / 2 = 361/3.
  assert rows[1.0]["random"]["kappa"]["std"] == pytest.approx(19 / math.sqrt(3))
  assert rows[1.0]["baselines"]["linear"]["kappa"] == pytest.approx(
      {"mean": 25.0, "std": None, "se": None, "n": 1})
  c = study_synthetic.get_config("smoke")
  report.write_report(str(tmp_path), summary, c, "/pre")
  text = open(tmp_path / "report.md").read()
  assert "| pretrained OA | random OA | paired gain (OA pts) | pretrained kappa | random kappa |" \
      in text and "(Cohen's kappa x 100)" in text
  assert ("| 1 | 60.0 ± 10.0 | 53.7 ± 11.0 | +6.3 ± 3.2 | beyond noise (3 seeds) | 70.0 ± 10.0 "
          "| 63.7 ± 11.0 | +6.3 ± 3.2 | 40.0 ± 10.0 | 33.7 ± 11.0 |") in text
  assert "| linear mIoU | linear OA | linear kappa |" in text
  assert "| 1 | 40.0 (1 seed) | 50.0 (1 seed) | 25.0 (1 seed) |" in text
  # Records from an eval.json written before kappa existed: n/a, not 0 and no crash.
  assert report.table(report.summarise(RUNS)).splitlines()[2].endswith("| n/a | n/a |")


def test_one_seed_says_so_instead_of_a_zero_spread(tmp_path):
  runs = [r for r in RUNS if r["seed"] == 0]
  c = study_synthetic.get_config("smoke")
  summary = report.summarise(runs)
  assert summary[0]["gain_miou"]["std"] is None and summary[0]["gain_miou"]["within_noise"] is None
  report.write_report(str(tmp_path), summary, c, "/pre")
  text = open(tmp_path / "report.md").read()
  assert "± 0.0" not in text
  assert "| 1 | 50.0 (1 seed) | 45.0 (1 seed) | +5.0 (1 seed) | 1 seed: no spread |" in text
  assert report.spread_note(summary) == "1 seed"


def test_plot_draws_error_bars_only_with_several_seeds():
  for runs, bars, title in ((RUNS, 2, "mean ± std over 3-4 seeds"),
                            ([r for r in RUNS if r["seed"] == 0], 0, "(1 seed)")):
    fig, ax = plt.subplots()
    report.draw(ax, report.summarise(runs))
    errorbars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(errorbars) == bars and title in ax.get_title()
    plt.close(fig)


def test_the_pretrained_arm_is_named_by_its_objective(tmp_path):
  """Plot, report and study.json name the objective the pretrained arm's checkpoint was
  trained with, not a fixed one."""
  assert report.objective_name({"masked": 1.0}) == "masked"
  assert report.objective_name({"infonce": 1.0, "masked": 0.5}) == "infonce + 0.5 masked"
  assert report.arm_label("pretrained", {"masked": 1.0}) == "pretrained (masked)"
  assert report.arm_label("random", {"masked": 1.0}) == "random init"
  c = study_synthetic.get_config("smoke")
  summary = report.summarise(RUNS)
  report.write_study_json(str(tmp_path), RUNS, c, "/pre", complete=True,
                          objective={"masked": 1.0})
  report.write_report(str(tmp_path), summary, c, "/pre", objective={"masked": 1.0})
  assert json.load(open(tmp_path / "study.json"))["pretrain_objective"] == {"masked": 1.0}
  text = open(tmp_path / "report.md").read()
  assert "pre-training checkpoint `/pre` (objective: masked)" in text
  assert "contrastive" not in text
  fig, ax = plt.subplots()
  report.draw(ax, summary, {"vicreg": 1.0, "prototypes": 0.5})
  labels = ax.get_legend_handles_labels()[1]
  assert labels == ["pretrained (vicreg + 0.5 prototypes)", "random init"]
  plt.close(fig)


# Each run with its arm's chosen recipe (study.py's records): random chose `full` for seeds
# 0 and 2 although its `lp_ft` run had the better test mIoU at seed 0 (chosen on validation).
RECIPE_RUNS = [
    {"fraction": 0.25, "init": "pretrained", "seed": s, "miou": m, "oa": m, "recipe": "lp_ft"}
    for s, m in ((0, 0.60), (1, 0.62), (2, 0.58))] + [
    {"fraction": 0.25, "init": "random", "seed": s, "miou": m, "oa": m, "recipe": r,
     "recipe_scores": {"full": {"validation_miou": fv, "test_miou": ft},
                       "lp_ft": {"validation_miou": lv, "test_miou": lt}}}
    for s, m, r, fv, ft, lv, lt in ((0, 0.50, "full", 0.40, 0.50, 0.30, 0.55),
                                    (1, 0.52, "lp_ft", 0.30, 0.58, 0.35, 0.52),
                                    (2, 0.49, "full", 0.45, 0.49, 0.44, 0.40))]


def test_gain_is_against_randoms_chosen_recipe_and_the_report_shows_the_recipes(tmp_path):
  row = report.summarise(RECIPE_RUNS)[0]
  g = row["gain_miou"]
  # 60 - 50, 62 - 52, 58 - 49: random's chosen runs, not its best test mIoU (55, 58, 49)
  assert g["per_seed"] == pytest.approx({"0": 10.0, "1": 10.0, "2": 9.0})
  assert g["mean"] == pytest.approx(29 / 3)
  assert g["std"] == pytest.approx(math.sqrt(1 / 3))  # deviations 1/3, 1/3, -2/3
  assert g["within_noise"] is False                    # 9.67 >= 2 x 0.33
  assert g["per_seed_recipes"] == {"0": {"pretrained": "lp_ft", "random": "full"},
                                   "1": {"pretrained": "lp_ft", "random": "lp_ft"},
                                   "2": {"pretrained": "lp_ft", "random": "full"}}
  assert row["random"]["recipes"] == {"full": 2, "lp_ft": 1}
  assert row["random"]["recipe_per_seed"] == {"0": "full", "1": "lp_ft", "2": "full"}
  c = study_synthetic.get_config()
  c.study.candidates.pretrained = ("lp_ft",)
  c.study.candidates.random = ("full", "lp_ft")
  c.study.seeds = (0, 1, 2)
  report.write_study_json(str(tmp_path), RECIPE_RUNS, c, "/pre", complete=True)
  paths = report.write_report(str(tmp_path), report.summarise(RECIPE_RUNS), c, "/pre")
  text = open(paths["report"]).read()
  assert "| 1/4 | 60.0 ± 2.0 | 50.3 ± 1.5 | +9.7 ± 0.6 | beyond noise (3 seeds) |" in text
  assert "Candidates: pretrained `lp_ft`; random `full`, `lp_ft`." in text
  assert ("| 1/4 | lp_ft 3 | 0 lp_ft, 1 lp_ft, 2 lp_ft | full 2 / lp_ft 1 | "
          "0 full, 1 lp_ft, 2 full |") in text
  assert "each run with the recipe its arm chose" in text
  study = json.load(open(paths["json"]))
  assert study["study"]["candidates"] == {"pretrained": ["lp_ft"], "random": ["full", "lp_ft"]}
  assert study["summary"][0]["random"]["recipe_per_seed"]["1"] == "lp_ft"
  fig, ax = plt.subplots()  # the plot writes each arm's recipe counts beside its point
  report.draw(ax, report.summarise(RECIPE_RUNS))
  assert sorted(t.get_text() for t in ax.texts) == ["full 2 / lp_ft 1", "lp_ft 3"]
  plt.close(fig)


def test_an_older_study_json_and_a_plain_tuple_of_candidates_still_read(tmp_path):
  """study.json files written before the per-init mapping: `candidates` one list for every
  init; the report of a config with a plain tuple."""
  older = {"study": {"candidates": ["full", "lp_ft"], "inits": ["pretrained", "random"]},
           "runs": RECIPE_RUNS}
  assert report.candidates_of(older["study"]) == {"pretrained": ["full", "lp_ft"],
                                                  "random": ["full", "lp_ft"]}
  assert report.candidates_of({"candidates": {"pretrained": ["lp_ft"], "random": ["full"]}}) == {
      "pretrained": ["lp_ft"], "random": ["full"]}
  assert report.candidates_of({"candidates": ["lp_ft"], "inits": ["random"]}) == {
      "random": ["lp_ft"]}
  c = study_synthetic.get_config("smoke")
  defaults.set_candidates(c, ("full", "lp_ft"))
  report.write_report(str(tmp_path), report.summarise(older["runs"]), c, "/pre")
  assert ("Candidates: pretrained `full`, `lp_ft`; random `full`, `lp_ft`."
          in open(tmp_path / "report.md").read())
  no_recipe = report.summarise(RUNS)  # runs without a recipe (older still): no such section
  report.write_report(str(tmp_path), no_recipe, c, "/pre")
  assert "Fine-tuning recipe" not in open(tmp_path / "report.md").read()


def test_equal_scores_on_every_seed_are_within_noise_not_beyond():
  runs = [dict(r, init="random") for r in RECIPE_RUNS if r["init"] == "pretrained"]
  gain = report.summarise(RECIPE_RUNS[:3] + runs)[0]["gain_miou"]
  assert gain["mean"] == 0 and gain["std"] == 0 and gain["within_noise"] is True
  row = report.summarise(RECIPE_RUNS[:3], [dict(r, baseline="linear") for r in runs])[0]
  assert row["deep_vs_classical"]["within_noise"] is True
  assert "is within noise of" in report.comparison_line(row)
