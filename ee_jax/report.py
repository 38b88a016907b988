"""Study outputs: study.json, report.md (mean +- std per fraction and init, gain in points)
and label_fraction.png (mIoU against label fraction, one curve per initialisation)."""

import json
import os

import numpy as np


def _stats(values):
  v = np.array([x for x in values if x is not None], np.float64) * 100
  if v.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "n": int(v.size)}


def summarise(runs: list[dict]) -> list[dict]:
  """One row per fraction: mIoU/OA statistics (in %) per init and the gain in points."""
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
      a, b = row["pretrained"]["miou"]["mean"], row["random"]["miou"]["mean"]
      row["gain_miou_points"] = None if a is None or b is None else a - b
      a, b = row["pretrained"]["oa"]["mean"], row["random"]["oa"]["mean"]
      row["gain_oa_points"] = None if a is None or b is None else a - b
    rows.append(row)
  return rows


def _fraction_label(f: float) -> str:
  k = -np.log2(f)
  return "1" if f == 1 else (f"1/{int(round(2 ** k))}" if abs(k - round(k)) < 1e-9 else f"{f:g}")


def _pm(s):
  return "n/a" if s["mean"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def table(summary: list[dict]) -> str:
  inits = [i for i in ("pretrained", "random") if i in summary[0]]
  head = "| fraction | " + " | ".join(f"{i} mIoU" for i in inits)
  head += (" | gain (mIoU pts)" if len(inits) == 2 else "")
  head += " | " + " | ".join(f"{i} OA" for i in inits) + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cells = [_fraction_label(row["fraction"])] + [_pm(row[i]["miou"]) for i in inits]
    if len(inits) == 2:
      g = row["gain_miou_points"]
      cells.append("n/a" if g is None else f"{g:+.1f}")
    cells += [_pm(row[i]["oa"]) for i in inits]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_study_json(workdir, runs, config, pretrain_dir, complete: bool) -> str:
  path = os.path.join(workdir, "study.json")
  out = {"complete": complete, "pretrain_workdir": pretrain_dir, "runs": runs,
         "summary": summarise(runs) if runs else [],
         "study": config.study.to_dict(), "dataset": config.data.name}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, path)  # never a half-written study.json
  return path


def plot(summary: list[dict], path: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  colours = {"pretrained": "tab:blue", "random": "tab:orange"}
  for init in ("pretrained", "random"):
    pts = [(r["fraction"], r[init]["miou"]) for r in summary
           if init in r and r[init]["miou"]["mean"] is not None]
    if not pts:
      continue
    pts.sort()
    x = np.array([p[0] for p in pts])
    m = np.array([p[1]["mean"] for p in pts])
    s = np.array([p[1]["std"] for p in pts])
    label = "dense contrastive pre-training" if init == "pretrained" else "random init"
    ax.plot(x, m, "o-", color=colours[init], label=label)
    ax.fill_between(x, m - s, m + s, color=colours[init], alpha=0.2)
  ax.set_xscale("log", base=2)
  fractions = sorted({r["fraction"] for r in summary})
  ax.set_xticks(fractions)
  ax.set_xticklabels([_fraction_label(f) for f in fractions])
  ax.set_xlabel("fraction of labelled training tiles")
  ax.set_ylabel("test mIoU (%)")
  ax.set_title("Segmentation vs. label fraction (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def write_report(workdir, summary, config, pretrain_dir) -> dict:
  st = config.study
  text = [
      "# Label-fraction study",
      "",
      f"Dataset `{config.data.name}/{config.data.config_name}`; fine-tuning "
      f"{config.train.steps} steps per run; seeds {list(st.seeds)}; pre-training "
      f"checkpoint `{pretrain_dir}`. Test split `{config.finetune.test_split}`; mean ± std "
      f"over seeds, in %; gain = pretrained - random, in points.",
      "",
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
  return {"report": report_path, "plot": plot(summary, os.path.join(workdir, "label_fraction.png")),
          "json": os.path.join(workdir, "study.json")}
