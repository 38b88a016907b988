"""The study report's numbers on hand-computed study results: paired gains, noise, 1 seed."""

import json
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from configs import study_synthetic  # noqa: E402
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
