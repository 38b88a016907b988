"""Study outputs: study.json, report.md and label_fraction.png (mIoU against label fraction,
one curve per initialisation, with error bars over seeds when there are several).

The gain is PAIRED: for each seed, pretrained minus random on the same labelled tiles
(a fraction's tiles are chosen by the seed), so the spread of the gain is that of the
differences, not of two independent means. A gain is within noise when its |mean| is below
twice its standard error (std / sqrt(n) over the n seeds); with one seed there is no spread
to judge by, and the report says "1 seed" instead.

The pretrained arm is named by the objective its checkpoint was pre-trained with
(`objective`: {name: weight} of the active ones, e.g. "pretrained (masked)"), so a plot or
report cannot claim a pre-training the study did not use.
"""

import json
import os

import numpy as np

NOISE_RULE = ("a gain is *within noise* when |mean| < 2 x its standard error "
              "(std / sqrt(n) over the n seeds' paired gains)")


def _stats(values):
  """mean, std (n-1), n and standard error of percentages; std and se None below 2 values."""
  v = np.array([x for x in values if x is not None], np.float64) * 100
  if v.size == 0:
    return {"mean": None, "std": None, "se": None, "n": 0}
  std = float(v.std(ddof=1)) if v.size > 1 else None
  return {"mean": float(v.mean()), "std": std,
          "se": None if std is None else std / float(np.sqrt(v.size)), "n": int(v.size)}


def paired_gain(runs: list[dict], fraction: float, metric: str) -> dict:
  """Per-seed gains (points) of pretrained over random at `fraction`, and their statistics;
  `within_noise` is None with fewer than 2 seeds."""
  by = {(r["init"], r["seed"]): r[metric] for r in runs if r["fraction"] == fraction}
  seeds = sorted(s for (i, s) in by if i == "pretrained" and ("random", s) in by
                 and by[("pretrained", s)] is not None and by[("random", s)] is not None)
  per_seed = {str(s): 100 * (by[("pretrained", s)] - by[("random", s)]) for s in seeds}
  stats = _stats([g / 100 for g in per_seed.values()])
  noise = (None if stats["se"] is None
           else bool(abs(stats["mean"]) < 2 * stats["se"]))
  return {**stats, "per_seed": per_seed, "within_noise": noise}


def summarise(runs: list[dict]) -> list[dict]:
  """One row per fraction: mIoU/OA statistics (in %) per init and the paired gains (points)."""
  rows = []
  for fraction in sorted({r["fraction"] for r in runs}, reverse=True):
    row = {"fraction": fraction}
    for init in sorted({r["init"] for r in runs}):
      sel = [r for r in runs if r["fraction"] == fraction and r["init"] == init]
      row[init] = {"miou": _stats([r["miou"] for r in sel]),
                   "oa": _stats([r["oa"] for r in sel])}
      chosen = [r["recipe"] for r in sel if r.get("recipe")]
      if chosen:
        row[init]["recipes"] = {name: chosen.count(name) for name in sorted(set(chosen))}
    if "pretrained" in row and "random" in row:
      row["gain_miou"] = paired_gain(runs, fraction, "miou")
      row["gain_oa"] = paired_gain(runs, fraction, "oa")
    rows.append(row)
  return rows


def objective_name(objective: dict | None) -> str:
  """'masked', 'infonce + 0.5 masked': the active objectives, weights other than 1 shown."""
  if not objective:
    return "objective unknown"
  return " + ".join(name if w == 1 else f"{w:g} {name}" for name, w in objective.items())


def arm_label(init: str, objective: dict | None = None) -> str:
  """The legend name of an initialisation: the pretrained one with its objective."""
  if init == "pretrained":
    return f"pretrained ({objective_name(objective)})"
  return "random init" if init == "random" else init


def _fraction_label(f: float) -> str:
  k = -np.log2(f)
  return "1" if f == 1 else (f"1/{int(round(2 ** k))}" if abs(k - round(k)) < 1e-9 else f"{f:g}")


def _pm(s, sign: str = ""):
  if s["mean"] is None:
    return "n/a"
  mean = f"{s['mean']:{sign}.1f}"
  return f"{mean} ({s['n']} seed)" if s["std"] is None else f"{mean} ± {s['std']:.1f}"


def _verdict(g) -> str:
  if g["mean"] is None:
    return "n/a"
  if g["within_noise"] is None:
    return "1 seed: no spread"
  return "within noise" if g["within_noise"] else f"beyond noise ({g['n']} seeds)"


def table(summary: list[dict]) -> str:
  inits = [i for i in ("pretrained", "random") if i in summary[0]]
  paired = len(inits) == 2
  head = "| fraction | " + " | ".join(f"{i} mIoU" for i in inits)
  head += (" | paired gain (mIoU pts) | gain vs noise" if paired else "")
  head += " | " + " | ".join(f"{i} OA" for i in inits)
  head += (" | paired gain (OA pts)" if paired else "") + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cells = [_fraction_label(row["fraction"])] + [_pm(row[i]["miou"]) for i in inits]
    if paired:
      cells += [_pm(row["gain_miou"], "+"), _verdict(row["gain_miou"])]
    cells += [_pm(row[i]["oa"]) for i in inits]
    if paired:
      cells.append(_pm(row["gain_oa"], "+"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def spread_note(summary: list[dict]) -> str:
  """What the numbers are over, for the plot title and the report: no spread promised
  where there is none."""
  counts = {row[i]["miou"]["n"] for row in summary for i in ("pretrained", "random")
            if i in row and row[i]["miou"]["n"]}
  if not counts or max(counts) <= 1:
    return "1 seed"
  lo, hi = min(counts), max(counts)
  return f"mean ± std over {hi if lo == hi else f'{lo}-{hi}'} seeds"


def write_study_json(workdir, runs, config, pretrain_dir, complete: bool,
                     objective: dict | None = None) -> str:
  path = os.path.join(workdir, "study.json")
  out = {"complete": complete, "pretrain_workdir": pretrain_dir,
         "pretrain_objective": objective, "runs": runs,
         "summary": summarise(runs) if runs else [],
         "study": config.study.to_dict(), "dataset": config.data.name}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, path)  # never a half-written study.json
  return path


def plot(summary: list[dict], path: str, objective: dict | None = None) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  draw(ax, summary, objective)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def draw(ax, summary: list[dict], objective: dict | None = None) -> None:
  """mIoU against label fraction on matplotlib axes `ax`, one curve per initialisation
  (the pretrained one named by its pre-training `objective`)."""
  colours = {"pretrained": "tab:blue", "random": "tab:orange"}
  for init in ("pretrained", "random"):
    pts = [(r["fraction"], r[init]["miou"]) for r in summary
           if init in r and r[init]["miou"]["mean"] is not None]
    if not pts:
      continue
    pts.sort(key=lambda p: p[0])
    x = np.array([p[0] for p in pts])
    m = np.array([p[1]["mean"] for p in pts])
    label = arm_label(init, objective)
    if any(p[1]["std"] is not None for p in pts):  # error bars only where there is a spread
      err = np.array([p[1]["std"] or 0.0 for p in pts])
      ax.errorbar(x, m, yerr=err, fmt="o-", capsize=3, color=colours[init], label=label)
    else:
      ax.plot(x, m, "o-", color=colours[init], label=label)
  ax.set_xscale("log", base=2)
  fractions = sorted({r["fraction"] for r in summary})
  ax.set_xticks(fractions)
  ax.set_xticklabels([_fraction_label(f) for f in fractions])
  ax.set_xlabel("fraction of labelled training tiles")
  ax.set_ylabel("test mIoU (%)")
  ax.set_title(f"Segmentation vs. label fraction ({spread_note(summary)})")
  ax.grid(alpha=0.3)
  ax.legend()


def _gain_note(summary) -> list[str]:
  if "gain_miou" not in summary[0]:
    return []
  return ["Paired gain = pretrained - random for the same seed and the same labelled tiles, "
          f"in points, mean ± std over seeds; {NOISE_RULE}. With one seed there is no "
          "spread: such a gain is marked \"1 seed\", not judged.", ""]


def write_report(workdir, summary, config, pretrain_dir, objective: dict | None = None) -> dict:
  st = config.study
  source = f"pre-training checkpoint `{pretrain_dir}`" + (
      f" (objective: {objective_name(objective)})" if objective else "")
  text = [
      "# Label-fraction study",
      "",
      f"Dataset `{config.data.name}/{config.data.config_name}`; fine-tuning "
      f"{config.train.steps} steps per run; seeds {list(st.seeds)}; {source}. Test split "
      f"`{config.finetune.test_split}`; {spread_note(summary)}, in %.",
      "",
      *_gain_note(summary),
      table(summary),
      "",
      "![mIoU against label fraction](label_fraction.png)",
      "",
  ]
  if len(st.candidates) > 1:
    text += [f"Fine-tuning recipe of each run, chosen on `{st.select_split}` mIoU among "
             f"{', '.join(f'`{r}`' for r in st.candidates)} (runs per recipe):", ""]
    for row in summary:
      for init in ("pretrained", "random"):
        if init in row and row[init].get("recipes"):
          counts = ", ".join(f"{r} x{n}" for r, n in row[init]["recipes"].items())
          text.append(f"- {_fraction_label(row['fraction'])}, {init}: {counts}")
    text.append("")
  report_path = os.path.join(workdir, "report.md")
  with open(report_path, "w") as f:
    f.write("\n".join(text))
  return {"report": report_path,
          "plot": plot(summary, os.path.join(workdir, "label_fraction.png"), objective),
          "json": os.path.join(workdir, "study.json")}
