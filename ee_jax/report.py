"""Study outputs: study.json, report.md and label_fraction.png (mIoU against label fraction,
one curve per initialisation, with error bars over seeds when there are several, and a
dashed one per classical baseline).

The gain is PAIRED: for each seed, pretrained minus random on the same labelled tiles
(a fraction's tiles are chosen by the seed), so the spread of the gain is that of the
differences, not of two independent means. A gain is within noise when its |mean| is below
twice its standard error (std / sqrt(n) over the n seeds); with one seed there is no spread
to judge by, and the report says "1 seed" instead.

The pretrained arm is named by the objective its checkpoint was pre-trained with
(`objective`: {name: weight} of the active ones, e.g. "pretrained (masked)"), so a plot or
report cannot claim a pre-training the study did not use.

Each run's record is its chosen fine-tuning recipe's (`recipe`: the one with the best
validation mIoU among its arm's `study.candidates`), so the paired gain is pretrained minus
random *as each arm fine-tunes best* for that seed; report.md lists the recipes chosen per
fraction, arm and seed, the plot writes the counts beside each point, study.json has them
in each summary row (`recipes`, `recipe_per_seed`) and each gain (`per_seed_recipes`).

Classical baselines (ee_jax/baselines) are judged by the same rule: per fraction, the best
deep arm minus the best baseline (each the best by mean mIoU there), paired by seed (they
run on the study's seeds; only seeds both sides have count).

Embedding baselines (a classical classifier with the pre-trained embedding beside its
pixel features) use the pre-training, so they are never "classical": each is paired with
the same classifier on the pixels alone (what the embedding adds), and the study's answer
per fraction is the best use of the pre-training (the pretrained arm or an embedding
baseline) against the best without it (the random arm or a classical baseline).
"""

import io
import json
import os

import numpy as np

from ee_jax import storage

INITS = ("pretrained", "random")
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


def _paired(a: dict, b: dict) -> dict:
  """Gains (points) of a over b for the seeds both have ({seed: value}), their statistics
  and `within_noise` (None with fewer than 2 seeds)."""
  seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
  per_seed = {str(s): 100 * (a[s] - b[s]) for s in seeds}
  stats = _stats([g / 100 for g in per_seed.values()])
  # Equal scores on every seed (mean 0, se 0) are no gain: within noise, not beyond it.
  noise = (None if stats["se"] is None
           else bool(abs(stats["mean"]) < 2 * stats["se"] or stats["mean"] == 0))
  return {**stats, "per_seed": per_seed, "within_noise": noise}


def _by_seed(runs: list[dict], fraction: float, key: str, name: str, metric: str) -> dict:
  return {r["seed"]: r[metric] for r in runs if r["fraction"] == fraction and r[key] == name}


def paired_gain(runs: list[dict], fraction: float, metric: str) -> dict:
  """Per-seed gains (points) of pretrained over random at `fraction`, each run with its
  chosen recipe (`per_seed_recipes` names them where recorded), and their statistics;
  `within_noise` is None with fewer than 2 seeds."""
  gain = _paired(_by_seed(runs, fraction, "init", "pretrained", metric),
                 _by_seed(runs, fraction, "init", "random", metric))
  chosen = {init: _by_seed([r for r in runs if r.get("recipe")], fraction, "init", init,
                           "recipe") for init in INITS}
  if any(chosen.values()):
    gain["per_seed_recipes"] = {s: {init: chosen[init].get(int(s)) for init in INITS}
                                for s in gain["per_seed"]}
  return gain


def candidates_of(study) -> dict:
  """{init: [recipe, ...]} of a study section (a ConfigDict, or study.json's `study`):
  `candidates` a mapping {init: recipes} or, as in older configs and study.json files, one
  tuple/list for every init. Not checked (ee_jax/study.py checks before a study runs)."""
  raw = study.get("candidates") or ()
  inits = list(study.get("inits") or INITS)
  if hasattr(raw, "keys"):
    return {i: list(raw[i]) for i in inits if i in raw}
  return {i: list(raw) for i in inits}


def recipe_counts(counts: dict) -> str:
  """'lp_ft 3 / full 2': runs per chosen recipe, most first (then by name)."""
  return " / ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))


def _best(row: dict, names) -> str | None:
  """The arm of `names` in `row` with the highest mean mIoU (the first among equals)."""
  scored = [n for n in names if n in row and row[n]["miou"]["mean"] is not None]
  return max(scored, key=lambda n: row[n]["miou"]["mean"]) if scored else None


def deep_vs_classical(runs, baselines, row: dict) -> dict | None:
  """Paired gain (mIoU points, same seed, same tiles) of the best deep arm over the best
  classical baseline at `row`'s fraction, each chosen by its mean over seeds."""
  deep = _best(row, ("pretrained", "random"))
  classical = _best(row.get("baselines", {}), sorted(row.get("baselines", {})))
  if deep is None or classical is None:
    return None
  f = row["fraction"]
  gain = _paired(_by_seed(runs, f, "init", deep, "miou"),
                 _by_seed(baselines, f, "baseline", classical, "miou"))
  return {"deep": deep, "classical": classical, **gain}


def with_vs_without(runs, baselines, embedded, row: dict) -> dict | None:
  """Paired gain (mIoU points) of the best use of the pre-training at `row`'s fraction (the
  pretrained arm or an embedding baseline) over the best without it (the random arm or a
  classical baseline), each the best by mean mIoU there; None where a side is missing."""
  f = row["fraction"]
  sides = {"with": {}, "without": {}}  # side -> {arm: (its statistics, {seed: mIoU})}
  for side, init in (("with", "pretrained"), ("without", "random")):
    if init in row:
      sides[side][init] = (row[init], _by_seed(runs, f, "init", init, "miou"))
  for name, stats in row.get("embedding_baselines", {}).items():
    sides["with"][f"{name}+pretrained"] = (stats, _by_seed(embedded, f, "baseline", name, "miou"))
  for name, stats in row.get("baselines", {}).items():
    sides["without"][name] = (stats, _by_seed(baselines, f, "baseline", name, "miou"))
  best = {side: _best({arm: v[0] for arm, v in arms.items()}, list(arms))
          for side, arms in sides.items()}
  if None in best.values():
    return None
  gain = _paired(sides["with"][best["with"]][1], sides["without"][best["without"]][1])
  return {"with": best["with"], "without": best["without"], **gain}


def _scores(sel: list[dict]) -> dict:
  """mIoU, OA and kappa statistics (x100) of runs `sel`; kappa n/a in runs scored before
  eval.json had it."""
  return {m: _stats([r.get(m) for r in sel]) for m in ("miou", "oa", "kappa")}


def summarise(runs: list[dict], baselines: list[dict] = (),
              embedded: list[dict] = ()) -> list[dict]:
  """One row per fraction: mIoU/OA/kappa statistics (x100) per init, paired gains (points);
  with `baselines` (classical runs, each naming its `baseline`) their statistics under
  `baselines` and the best deep arm against the best of them (`deep_vs_classical`); with
  `embedded` (embedding baselines) their statistics under `embedding_baselines`, each with
  its paired gain over the same classifier on the pixels (`gain_over_pixels`), and the
  best with the pre-training against the best without (`with_vs_without`)."""
  rows = []
  for fraction in sorted({r["fraction"] for r in [*runs, *baselines, *embedded]},
                         reverse=True):
    row = {"fraction": fraction}
    for init in sorted({r["init"] for r in runs}):
      sel = [r for r in runs if r["fraction"] == fraction and r["init"] == init]
      row[init] = _scores(sel)
      chosen = [r["recipe"] for r in sel if r.get("recipe")]
      if chosen:
        row[init]["recipes"] = {name: chosen.count(name) for name in sorted(set(chosen))}
        row[init]["recipe_per_seed"] = {str(r["seed"]): r["recipe"]
                                        for r in sorted(sel, key=lambda r: r["seed"])
                                        if r.get("recipe")}
    if "pretrained" in row and "random" in row:
      row["gain_miou"] = paired_gain(runs, fraction, "miou")
      row["gain_oa"] = paired_gain(runs, fraction, "oa")
    if baselines:
      row["baselines"] = {}
      for name in sorted({r["baseline"] for r in baselines}):
        sel = [r for r in baselines if r["fraction"] == fraction and r["baseline"] == name]
        row["baselines"][name] = {**_scores(sel),
                                  "indices": sel[0].get("indices", []) if sel else []}
      row["deep_vs_classical"] = deep_vs_classical(runs, baselines, row)
    if embedded:
      row["embedding_baselines"] = {}
      for name in sorted({r["baseline"] for r in embedded}):
        sel = [r for r in embedded if r["fraction"] == fraction and r["baseline"] == name]
        pixels = _by_seed(baselines, fraction, "baseline", name, "miou")
        row["embedding_baselines"][name] = {
            **_scores(sel),
            "gain_over_pixels": (_paired(_by_seed(embedded, fraction, "baseline", name, "miou"),
                                         pixels) if pixels else None)}
    if embedded or baselines:
      row["with_vs_without"] = with_vs_without(runs, baselines, embedded, row)
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
  head += (" | paired gain (OA pts)" if paired else "")
  head += " | " + " | ".join(f"{i} kappa" for i in inits) + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cells = [_fraction_label(row["fraction"])] + [_pm(row[i]["miou"]) for i in inits]
    if paired:
      cells += [_pm(row["gain_miou"], "+"), _verdict(row["gain_miou"])]
    cells += [_pm(row[i]["oa"]) for i in inits]
    if paired:
      cells.append(_pm(row["gain_oa"], "+"))
    cells += [_pm(row[i]["kappa"]) for i in inits]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def baseline_table(summary: list[dict]) -> str:
  """mIoU, OA and kappa of each classical baseline, and the best deep arm's paired gain over
  the best of them."""
  names = sorted(summary[0]["baselines"])
  head = ("| fraction | " + " | ".join(f"{n} mIoU" for n in names) + " | "
          + " | ".join(f"{n} OA" for n in names) + " | "
          + " | ".join(f"{n} kappa" for n in names)
          + " | best deep - best classical (mIoU pts) | gain vs noise |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cmp_ = row.get("deep_vs_classical")
    cells = ([_fraction_label(row["fraction"])]
             + [_pm(row["baselines"][n]["miou"]) for n in names]
             + [_pm(row["baselines"][n]["oa"]) for n in names]
             + [_pm(row["baselines"][n]["kappa"]) for n in names])
    cells += ([f"{_pm(cmp_, '+')} ({cmp_['deep']} - {cmp_['classical']})", _verdict(cmp_)]
              if cmp_ else ["n/a", "n/a"])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _versus(f: str, a: str, b: str, c: dict) -> str:
  """'- 1/16: A beats B beyond noise: +x ± y points (n seeds).' for the paired gain `c` of
  A over B."""
  gain = f"{_pm(c, '+')} points"
  if c["within_noise"] is None:
    return f"- {f}: {a} vs {b}: {gain}; 1 seed: not judged."
  if c["within_noise"]:
    return f"- {f}: {a} is within noise of {b}: {gain}."
  verb = "beats" if c["mean"] > 0 else "is below"
  return f"- {f}: {a} {verb} {b} beyond noise: {gain} ({c['n']} seeds)."


def comparison_line(row: dict) -> str:
  """Whether the best deep arm beats the best classical baseline at `row`'s fraction."""
  f = _fraction_label(row["fraction"])
  c = row.get("deep_vs_classical")
  if not c or c["mean"] is None:
    return f"- {f}: no paired deep and classical results."
  deep = f"the best deep arm ({c['deep']}, {row[c['deep']]['miou']['mean']:.1f})"
  classical = (f"the best classical baseline ({c['classical']}, "
               f"{row['baselines'][c['classical']]['miou']['mean']:.1f})")
  return _versus(f, deep, classical, c)


def _arm_mean(row: dict, arm: str) -> float:
  """Mean mIoU of `arm` in `row`: an init, a baseline or '<baseline>+pretrained'."""
  if arm in INITS:
    return row[arm]["miou"]["mean"]
  if arm.endswith("+pretrained"):
    return row["embedding_baselines"][arm[:-len("+pretrained")]]["miou"]["mean"]
  return row["baselines"][arm]["miou"]["mean"]


def with_without_line(row: dict) -> str:
  """Whether the best use of the pre-training beats the best without it at `row`'s
  fraction."""
  f = _fraction_label(row["fraction"])
  c = row.get("with_vs_without")
  if not c or c["mean"] is None:
    return f"- {f}: no paired results with and without the pre-training."
  return _versus(f, f"the best with the pre-training ({c['with']}, "
                    f"{_arm_mean(row, c['with']):.1f})",
                 f"the best without it ({c['without']}, {_arm_mean(row, c['without']):.1f})", c)


def embedding_table(summary: list[dict]) -> str:
  """mIoU of each embedding baseline and its paired gain over the same classifier on the
  pixels alone."""
  names = sorted(summary[0]["embedding_baselines"])
  head = ("| fraction | "
          + " | ".join(f"{n} + pretrained mIoU | {n} + pretrained OA | gain over {n} on "
                       f"pixels (mIoU pts) | gain vs noise" for n in names) + " |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cells = [_fraction_label(row["fraction"])]
    for name in names:
      arm = row["embedding_baselines"][name]
      gain = arm["gain_over_pixels"]
      cells += [_pm(arm["miou"]), _pm(arm["oa"])] + ([_pm(gain, "+"), _verdict(gain)] if gain
                                     else ["n/a (no classical run)", "n/a"])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _embedding_section(summary) -> list[str]:
  out = []
  if summary and "embedding_baselines" in summary[0]:
    out += ["## Classical classifiers with the pre-trained embedding", "",
            "Each classifier of `study.embedding_baselines` on the same sampled pixels as its "
            "classical run, with the pre-trained backbone's per-pixel embedding (frozen, no "
            "fine-tuning) and the embedding's 3x3 mean beside the per-pixel features: the "
            "pre-training used without a deep head. Gain = with the embedding - without, "
            f"paired by seed; {NOISE_RULE}.", "", embedding_table(summary), ""]
  if summary and any(row.get("with_vs_without") for row in summary):
    out += ["## With the pre-training or without", "",
            "Per fraction, the best use of the pre-training (the pretrained arm or a "
            "classifier with its embedding) against the best without it (the random arm or a "
            "classical baseline), each the best by mean mIoU, paired by seed.", "",
            *[with_without_line(row) for row in summary], ""]
  return out


def _baseline_section(summary) -> list[str]:
  if not summary or "baselines" not in summary[0]:
    return []
  from ee_jax import baselines  # pylint: disable=import-outside-toplevel
  names = sorted(summary[0]["baselines"])
  indices = {n: next((r["baselines"][n]["indices"] for r in summary
                      if r["baselines"][n]["indices"]), []) for n in names}
  return ["## Classical baselines", "",
          "On the same labelled tiles as the deep runs of each fraction and seed, scored on "
          "the same test pixels with the same mIoU/OA/kappa code. "
          + baselines.describe(names, indices)
          + " Gain = best deep arm - best classical baseline (each the best by mean mIoU "
          f"at that fraction), paired by seed; {NOISE_RULE}.", "",
          baseline_table(summary), "",
          *[comparison_line(row) for row in summary], ""]


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
                     objective: dict | None = None, baselines: list[dict] = (),
                     embedded: list[dict] = ()) -> str:
  path = os.path.join(workdir, "study.json")
  out = {"complete": complete, "pretrain_workdir": pretrain_dir,
         "pretrain_objective": objective, "runs": runs, "baselines": list(baselines),
         "embedding_baselines": list(embedded),
         "summary": summarise(runs, baselines, embedded) if runs or baselines or embedded else [],
         "study": config.study.to_dict(), "dataset": config.data.name}
  storage.write_text(path, json.dumps(out, indent=2))  # never a half-written study.json
  return path


def plot(summary: list[dict], path: str, objective: dict | None = None) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  draw(ax, summary, objective)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png")   # through ee_jax.storage: the workdir may be gs://
  plt.close(fig)
  storage.write_bytes(path, png.getvalue())
  return path


BASELINE_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown")


def _curve(ax, pts, fmt: str, colour: str, label: str) -> None:
  """Means of `pts` [(fraction, stats)], with error bars only where there is a spread."""
  pts = sorted(pts, key=lambda p: p[0])
  x = np.array([p[0] for p in pts])
  m = np.array([p[1]["mean"] for p in pts])
  if any(p[1]["std"] is not None for p in pts):
    err = np.array([p[1]["std"] or 0.0 for p in pts])
    ax.errorbar(x, m, yerr=err, fmt=fmt, capsize=3, color=colour, label=label)
  else:
    ax.plot(x, m, fmt, color=colour, label=label)


def draw(ax, summary: list[dict], objective: dict | None = None) -> None:
  """mIoU against label fraction on matplotlib axes `ax`, one curve per initialisation
  (the pretrained one named by its pre-training `objective`), one dashed per classical
  baseline."""
  colours = {"pretrained": "tab:blue", "random": "tab:orange"}
  for init in ("pretrained", "random"):
    pts = [(r["fraction"], r[init]["miou"]) for r in summary
           if init in r and r[init]["miou"]["mean"] is not None]
    if pts:
      _curve(ax, pts, "o-", colours[init], arm_label(init, objective))
      for r in summary:  # the recipes this arm's runs chose there, beside its point
        if init in r and r[init].get("recipes") and r[init]["miou"]["mean"] is not None:
          ax.annotate(recipe_counts(r[init]["recipes"]), (r["fraction"], r[init]["miou"]["mean"]),
                      textcoords="offset points", xytext=(4, 6 if init == "pretrained" else -10),
                      fontsize=6, color=colours[init])
  names = sorted({n for r in summary
                  for n in (*r.get("baselines", {}), *r.get("embedding_baselines", {}))})
  for i, name in enumerate(names):
    pts = [(r["fraction"], r["baselines"][name]["miou"]) for r in summary
           if name in r.get("baselines", {}) and r["baselines"][name]["miou"]["mean"] is not None]
    if pts:
      _curve(ax, pts, "s--", BASELINE_COLOURS[i % len(BASELINE_COLOURS)], name)
    pts = [(r["fraction"], r["embedding_baselines"][name]["miou"]) for r in summary
           if name in r.get("embedding_baselines", {})
           and r["embedding_baselines"][name]["miou"]["mean"] is not None]
    if pts:  # the same classifier with the embedding: its colour, dotted
      _curve(ax, pts, "^:", BASELINE_COLOURS[i % len(BASELINE_COLOURS)],
             f"{name} + pretrained embedding")
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
  chose = any(row.get(i, {}).get("recipes") for row in summary for i in INITS)
  return ["Paired gain = pretrained - random for the same seed and the same labelled tiles, "
          + ("each run with the recipe its arm chose (see \"Fine-tuning recipe of each "
             "run\" below), " if chose else "") +
          f"in points, mean ± std over seeds; {NOISE_RULE}. With one seed there is no "
          "spread: such a gain is marked \"1 seed\", not judged.", ""]


def recipe_table(summary: list[dict]) -> str:
  """Per fraction and arm: runs per chosen recipe ('lp_ft 3 / full 2') and each seed's."""
  inits = [i for i in INITS if any(i in row for row in summary)]
  head = ("| fraction | " + " | ".join(f"{i}: runs per recipe | {i}: per seed" for i in inits)
          + " |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in summary:
    cells = [_fraction_label(row["fraction"])]
    for init in inits:
      arm = row.get(init, {})
      if arm.get("recipes"):
        cells += [recipe_counts(arm["recipes"]),
                  ", ".join(f"{s} {r}" for s, r in arm.get("recipe_per_seed", {}).items())]
      else:
        cells += ["n/a", "n/a"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _recipe_section(summary: list[dict], st) -> list[str]:
  if not any(row.get(i, {}).get("recipes") for row in summary for i in INITS):
    return []
  cands = candidates_of(st)
  tried = "; ".join(f"{init} {', '.join(f'`{r}`' for r in names)}"
                    for init, names in cands.items() if names)
  return ["## Fine-tuning recipe of each run", "",
          f"Candidates: {tried}. Where an arm has several, each run is fine-tuned with each "
          f"and keeps the one with the best `{st.get('select_split', 'validation')}` mIoU "
          "(never the test split); with one, that one. Every mIoU and gain above is the "
          "chosen recipe's: the paired gain is the pretrained run minus the random run of "
          "the same seed, each with its own chosen recipe (per seed: `seed recipe`).", "",
          recipe_table(summary), ""]


def write_report(workdir, summary, config, pretrain_dir, objective: dict | None = None) -> dict:
  st = config.study
  source = f"pre-training checkpoint `{pretrain_dir}`" + (
      f" (objective: {objective_name(objective)})" if objective else "")
  text = [
      "# Label-fraction study",
      "",
      f"Dataset `{config.data.name}/{config.data.config_name}`; fine-tuning "
      f"{config.train.steps} steps per run; seeds {list(st.seeds)}; {source}. Test split "
      f"`{config.finetune.test_split}`; {spread_note(summary)}, in % (Cohen's kappa x 100).",
      "",
      *_gain_note(summary),
      table(summary),
      "",
      "![mIoU against label fraction](label_fraction.png)",
      "",
      *_recipe_section(summary, st),
      *_baseline_section(summary),
      *_embedding_section(summary),
  ]
  report_path = os.path.join(workdir, "report.md")
  storage.write_text(report_path, "\n".join(text))
  return {"report": report_path,
          "plot": plot(summary, os.path.join(workdir, "label_fraction.png"), objective),
          "json": os.path.join(workdir, "study.json")}
