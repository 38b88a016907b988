"""The label-fraction study: fractions x initialisation (pretrained, random) x seeds.

Each run is a fine-tuning plus evaluation in <workdir>/runs/<name>; a run whose eval.json
exists is not redone, and an interrupted run resumes from its checkpoints, so the whole
study is resumable. The pre-training it compares against is either given
(`study.pretrain_workdir`) or run first into <workdir>/pretrain from `study.pretrain_config`,
on the study's dataset or on `study.pretrain_data` (other imagery). The pretrained arm
normalises with the pre-training's statistics, the random arm with the dataset's.

Fine-tuning recipes (`study.recipes`, name -> config overrides; `study.candidates` names
those tried, per initialisation {init: recipes} or one tuple for every init): where an arm
has more than one candidate, each of its runs is fine-tuned with each (one run directory
per recipe, <name>_<recipe>; nothing is shared between them, not even an LP-FT head stage
two recipes have in common), and the one with the best mIoU on `study.select_split` (never
the test split) gives the run's test result. Each initialisation thus gets the recipe that
suits it: a good pre-trained backbone is spent by training every weight at full rate on a
few tiles, while a random one needs exactly that. An arm with one candidate fine-tunes
each run once, in <name>, without the validation pass. The paired gain compares the
pretrained run with the random run of the same seed, each with its chosen recipe.

The runs are fine-tuned one after the other in this process; runs built from the same
ingredients share their compiled steps (ee_jax/runtime/shared_steps.py). The report names
the objective the pretrained arm was pre-trained with (its checkpoint's `loss.weights`).

Classical baselines (`study.baselines`, ee_jax/baselines) then run per fraction and seed on
the tiles the deep runs of that fraction and seed train on (the same selection), each in
<workdir>/runs/frac<f>_<baseline>_seed<s> and reused like a deep run once its eval.json
exists; the deep runs do not depend on them. `study.embedding_baselines` names classifiers
that run again on the same pixels with the pre-trained backbone's per-pixel embedding beside
the features (frozen, no fine-tuning: ee_jax/baselines/embedding.py), in
<workdir>/runs/frac<f>_<baseline>+pretrained_seed<s>: the pre-training used by a classical
classifier, paired with that classifier on the pixels alone.
"""

import functools
import importlib.util
import json
import os

import ml_collections

from ee_jax import baselines as baselines_lib
from ee_jax import config_files
from ee_jax import checkpoints, models, objectives, report, storage
from ee_jax.runtime import distributed, persistent_cache
from ee_jax.data import datasets
from ee_jax.errors import ConfigError
from ee_jax.train import finetune as finetune_lib
from ee_jax.train.pretrain import pretrain

INITS = ("pretrained", "random")


def load_config_file(path: str, arg: str | None = None,
                     what: str = "config.study.pretrain_config") -> ml_collections.ConfigDict:
  """get_config(arg) of a config file given by path (relative to the cwd) or by a shipped
  config's name (ee_jax/config_files.py); `what` names the setting the path came from, for
  the error."""
  found = config_files.resolve(path, what)
  spec = importlib.util.spec_from_file_location("study_pretrain_config", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def pretrain_config_for(config) -> ml_collections.ConfigDict:
  """The pre-training config with the study's compute choices (`model.dtype`,
  `model.conv_impl`), on the study's own dataset, or on `study.pretrain_data` (name,
  config_name, data_dir, builder) where the study names one (e.g. an s2_tiles build of
  other, unlabelled imagery)."""
  st = config.study
  p = load_config_file(st.pretrain_config, st.pretrain_arg)
  data = st.get("pretrain_data") or config.data
  for key in ("name", "config_name", "data_dir"):
    p.data[key] = data[key]
  p.data.builder = ml_collections.ConfigDict(data.builder.to_dict())
  p.model.dtype = config.model.dtype  # one compute-dtype switch for the whole study
  p.model.conv_impl = config.model.get("conv_impl", "auto")   # and one for the convolutions
  return p


def run_name(fraction: float, init: str, seed: int) -> str:
  return f"frac{fraction:.6g}_{init}_seed{seed}"


def apply_recipe(c, recipe: str, overrides) -> None:
  """Sets `overrides` ({section: {key: value}}) on config `c`; unknown names are an error."""
  for section, values in dict(overrides).items():
    for key, value in dict(values).items():
      if section not in c or not hasattr(c[section], "keys") or key not in c[section]:
        raise ConfigError(f"config.study.recipes.{recipe}: no setting '{section}.{key}' "
                          f"in the fine-tuning config")
      c[section][key] = value


def run_config(config, fraction: float, init: str, seed: int, pretrain_dir: str,
               model: dict | None = None, recipe: str | None = None):
  """One run's config; `model` (the pre-trained architecture) is used by every init, so
  random-init runs train exactly the network the pre-trained runs start from; `recipe`
  names the `study.recipes` entry applied on top (its model settings among
  models.RUN_CHOICES, e.g. `head_input`, apply over that architecture too)."""
  c = config.copy_and_resolve_references()
  c.unlock()
  if recipe is not None:
    apply_recipe(c, recipe, config.study.recipes[recipe])
  del c["study"]
  if model is not None:
    run_model = c.model  # the study's model choices with the recipe's on top
    c.model = ml_collections.ConfigDict(model)
    models.take_run_choices(c.model, run_model)  # the run's, not the pre-training's
  c.seed = seed
  c.finetune.label_fraction = fraction
  c.finetune.fraction_seed = seed
  c.init.checkpoint = pretrain_dir if init == "pretrained" else ""
  # Each arm normalises as its weights expect: the pretrained one with the statistics saved
  # in its checkpoint (pre-training on other imagery is the normal case), the random one
  # with the dataset's own. Band lists must still match (checked in run_study).
  c.init.allow_stats_mismatch = init == "pretrained"
  return c


def run_study(config, workdir: str) -> dict:
  st = config.study
  unknown = sorted(set(st.inits) - set(INITS))
  if unknown:
    raise ConfigError(f"config.study.inits: unknown {unknown}; known: {list(INITS)}")
  if any(not 0 < f <= 1 for f in st.fractions):
    raise ConfigError(f"config.study.fractions must be in (0, 1]: {list(st.fractions)}")
  for key in ("baselines", "embedding_baselines"):
    for name in st.get(key, ()):
      baselines_lib.get(name, f"config.study.{key}")  # unknown: refused before any work
  if st.get("embedding_baselines") and "pretrained" not in st.inits:
    raise ConfigError(f"config.study.embedding_baselines: {tuple(st.embedding_baselines)} "
                      f"need the pretrained arm's checkpoint, but config.study.inits has no "
                      f"'pretrained'; set --config.study.embedding_baselines='()'")
  recipes_of = recipes_by_init(st)
  check_recipes(config, recipes_of)
  storage.makedirs(workdir)
  pretrain_dir = st.pretrain_workdir or os.path.join(workdir, "pretrain")
  model, objective = None, None
  if "pretrained" in st.inits:
    if not st.pretrain_workdir:
      distributed.log(f"== pre-training: {pretrain_dir}")
      pretrain(pretrain_config_for(config), pretrain_dir)
      persistent_cache.release_compiled_programs()
    meta = checkpoints.load_params(pretrain_dir)[1]
    builder = distributed.primary_first(lambda: datasets.prepare(config.data), "prepare")
    checkpoints.check_bands(meta, builder.info.metadata, pretrain_dir, str(builder.data_dir))
    model = meta["model"]
    objective = pretrain_objective(meta)

  runs = []
  for fraction in st.fractions:
    for init in st.inits:
      for seed in st.seeds:
        name = run_name(fraction, init, seed)
        recipes = recipes_of[init]
        if len(recipes) <= 1:
          recipe = recipes[0] if recipes else None
          rundir = os.path.join(workdir, "runs", name)
          result = _run_or_reuse(run_config(config, fraction, init, seed, pretrain_dir,
                                            model, recipe), rundir, name)
          extra = {"recipe": recipe} if recipe else {}
        else:
          rundir, result, extra = _best_recipe(config, workdir, name, recipes, (
              fraction, init, seed, pretrain_dir, model))
        runs.append({"name": name, "fraction": fraction, "init": init, "seed": seed,
                     "miou": result["miou"], "oa": result["oa"], "kappa": result.get("kappa"),
                     "per_class_iou": result["per_class_iou"],
                     "per_class_f1": result.get("per_class_f1"), "workdir": rundir, **extra})
        if distributed.is_primary():  # one writer (the others would race on study.json.tmp)
          report.write_study_json(workdir, runs, config, pretrain_dir, complete=False,
                                  objective=objective)

  classical = []
  for fraction in st.fractions:
    for name in st.get("baselines", ()):
      for seed in st.seeds:
        classical.append(_baseline(config, workdir, name, fraction, seed,
                                   _tile_recipe(recipes_of)))
        if distributed.is_primary():
          report.write_study_json(workdir, runs, config, pretrain_dir, complete=False,
                                  objective=objective, baselines=classical)

  embedded = []
  # One embedder for all the rows' runs (loaded and compiled at the first that runs).
  shared_embedder = functools.cache(lambda: _embedder(pretrain_dir, builder))
  for fraction in st.fractions:
    for name in st.get("embedding_baselines", ()):
      for seed in st.seeds:
        embedded.append(_baseline(config, workdir, name, fraction, seed,
                                  _tile_recipe(recipes_of), embedding_from=pretrain_dir,
                                  embedder=shared_embedder))
        if distributed.is_primary():
          report.write_study_json(workdir, runs, config, pretrain_dir, complete=False,
                                  objective=objective, baselines=classical, embedded=embedded)

  summary = report.summarise(runs, classical, embedded)
  if distributed.is_primary():
    report.write_study_json(workdir, runs, config, pretrain_dir, complete=True,
                            objective=objective, baselines=classical, embedded=embedded)
    paths = report.write_report(workdir, summary, config, pretrain_dir, objective=objective)
    print(report.table(summary))
    print(f"Report: {paths['report']}\nPlot: {paths['plot']}\nResults: {paths['json']}")
  return summary


# Settings a recipe must leave as they are: they choose a run's labelled tiles, and the
# arms (and the classical baselines) are paired by seed on the same tiles.
SELECTION_KEYS = (("finetune", "class_balanced"), ("data", "train_split"))


def recipes_by_init(st) -> dict:
  """{init: [recipe, ...]} of `study.candidates` for every init of `study.inits`, checked:
  a tuple is the same for every init; a mapping names known inits only and every one the
  study runs; each names recipes of `study.recipes`, once. ConfigError otherwise, one line
  naming `config.study.candidates`."""
  raw = st.get("candidates", ())
  if hasattr(raw, "keys"):
    unknown = sorted(set(raw.keys()) - set(INITS))
    if unknown:
      raise ConfigError(f"config.study.candidates: unknown initialisation(s) {unknown}; "
                        f"known: {list(INITS)} (a mapping is {{init: recipes}})")
    missing = [i for i in st.inits if i not in raw]
    if missing:
      raise ConfigError(f"config.study.candidates: no recipes for {missing} (config.study."
                        f"inits runs them); give every init its tuple, or one tuple for all")
    per = {i: (raw[i], f"config.study.candidates.{i}") for i in st.inits}
  else:
    per = {i: (raw, "config.study.candidates") for i in st.inits}
  out = {}
  for init, (names, where) in per.items():
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
      raise ConfigError(f"{where}: {names!r} is not a tuple of recipe names, e.g. "
                        f"('full', 'lp_ft')")
    for recipe in names:
      if recipe not in st.recipes:
        raise ConfigError(f"{where}: no recipe '{recipe}' in config.study.recipes "
                          f"(known: {sorted(st.recipes)})")
    doubled = sorted({r for r in names if list(names).count(r) > 1})
    if doubled:
      raise ConfigError(f"{where}: recipe(s) {doubled} listed more than once")
    out[init] = list(names)
  return out


def check_recipes(config, recipes_of: dict) -> None:
  """Every candidate recipe applies and gives a valid fine-tuning config, the candidates
  all label the same tiles, and no recipe is chosen on the test split: before any work."""
  st = config.study
  selections = {}
  for recipe in sorted({r for names in recipes_of.values() for r in names}):
    if not recipe.isidentifier():
      raise ConfigError(f"config.study.recipes: name '{recipe}' is not an identifier")
    architecture = sorted(set(dict(st.recipes[recipe]).get("model", {}))
                          - set(models.RUN_CHOICES))
    if architecture:
      raise ConfigError(f"config.study.recipes.{recipe}: sets model.{architecture[0]}, but the "
                        f"runs' architecture comes from the pre-training; a recipe may set "
                        f"only model.{', model.'.join(sorted(models.RUN_CHOICES))}")
    candidate = config.copy_and_resolve_references()
    apply_recipe(candidate, recipe, st.recipes[recipe])
    try:
      finetune_lib.make_optimizer(candidate.optim, candidate.finetune,
                                  int(candidate.train.steps))
      finetune_lib.check_selection(candidate)
    except ConfigError as e:
      raise ConfigError(f"config.study.recipes.{recipe}: {e}") from None
    selections[recipe] = {f"{a}.{b}": candidate[a].get(b) for a, b in SELECTION_KEYS}
  if any(not names for names in recipes_of.values()):  # an arm fine-tunes the config as is
    selections["(no recipe)"] = {f"{a}.{b}": config[a].get(b) for a, b in SELECTION_KEYS}
  if len({json.dumps(v, sort_keys=True) for v in selections.values()}) > 1:
    raise ConfigError(f"config.study.candidates: the recipes label different tiles "
                      f"({selections}); the arms and baselines are paired on the same tiles")
  if (any(len(names) > 1 for names in recipes_of.values())
      and st.select_split == config.finetune.test_split):
    raise ConfigError(f"config.study.select_split: '{st.select_split}' is the test split; "
                      f"choosing the recipe on it would tune the reported score on the test set")


def _tile_recipe(recipes_of: dict) -> str | None:
  """A recipe for the baselines' run config: any candidate labels the same tiles
  (check_recipes), so the random arm's first, else any arm's first, else none."""
  names = recipes_of.get("random") or next((n for n in recipes_of.values() if n), [])
  return names[0] if names else None


def pretrain_objective(meta: dict) -> dict:
  """{objective: weight} a pre-training checkpoint was trained with (its config's
  `loss.weights`; none there means InfoNCE alone, as for older runs)."""
  return objectives.active((meta.get("config") or {}).get("loss"))


def _run_or_reuse(run_cfg, rundir: str, label: str) -> dict:
  """The run's test result (eval.json): fine-tunes first unless it is already there."""
  eval_path = os.path.join(rundir, "eval.json")
  if not storage.exists(eval_path):
    distributed.log(f"== {label}")
    finetune_lib.finetune(run_cfg, rundir)
    # A long study must not pile up programs; runs in between share their compiled steps.
    persistent_cache.release_if_crowded()
  return json.loads(storage.read_text(eval_path))


def _embedder(pretrain_dir: str, builder):
  from ee_jax.baselines import embedding  # pylint: disable=import-outside-toplevel
  return embedding.from_checkpoint(pretrain_dir, builder.info.metadata["bands"],
                                   str(builder.data_dir))


def _baseline(config, workdir: str, name: str, fraction: float, seed: int,
              recipe: str | None, embedding_from: str = "", embedder=None) -> dict:
  """Classical baseline `name`'s record at `fraction` and `seed`, run unless its eval.json
  is there. Its tiles come from a deep run's config at that fraction and seed (with
  `recipe`, a candidate: every candidate labels the same tiles), through the same
  finetune.select_tiles. `embedding_from`: the pre-training, whose embedding goes beside
  the pixels' features (the run is named `<name>+pretrained`); `embedder()` returns its
  embedder, built once for all the runs."""
  from ee_jax.baselines import runner  # pylint: disable=import-outside-toplevel
  run = run_name(fraction, f"{name}+pretrained" if embedding_from else name, seed)
  rundir = os.path.join(workdir, "runs", run)
  eval_path = os.path.join(rundir, "eval.json")
  if storage.exists(eval_path):
    result = json.loads(storage.read_text(eval_path))
  else:
    distributed.log(f"== {run}")
    result = runner.run_baseline(run_config(config, fraction, "random", seed, "", None,
                                            recipe), name, rundir,
                                 embedding_from=embedding_from,
                                 embed=embedder() if embedder else None)
  return {"name": run, "fraction": fraction, "baseline": name, "seed": seed,
          "miou": result["miou"], "oa": result["oa"], "kappa": result.get("kappa"),
          "per_class_iou": result["per_class_iou"], "per_class_f1": result.get("per_class_f1"),
          "indices": result.get("indices", []),
          **({"embedding_from": embedding_from} if embedding_from else {}),
          "workdir": rundir}


def _best_recipe(config, workdir: str, name: str, recipes: list, run_args: tuple):
  """Fine-tunes with every recipe; returns (rundir, test result, record) of the one with
  the best mIoU on study.select_split (the first listed among equals)."""
  split = config.study.select_split
  scores, results = {}, {}
  for recipe in recipes:
    rundir = os.path.join(workdir, "runs", f"{name}_{recipe}")
    run_cfg = run_config(config, *run_args, recipe=recipe)
    results[recipe] = _run_or_reuse(run_cfg, rundir, f"{name} ({recipe})")
    select_path = os.path.join(rundir, f"eval_{split}.json")
    if storage.exists(select_path):
      selected = json.loads(storage.read_text(select_path))
    else:
      selected = finetune_lib.evaluate(run_cfg, rundir, split=split,
                                       filename=f"eval_{split}.json",
                                       checkpoint=finetune_lib.params_source(rundir))
      persistent_cache.release_if_crowded()
    scores[recipe] = selected["miou"]
  best = max(recipes, key=lambda r: -1.0 if scores[r] is None else scores[r])
  record = {"recipe": best, "select_split": split,
            "recipe_scores": {r: {f"{split}_miou": scores[r], "test_miou": results[r]["miou"]}
                              for r in recipes}}
  return os.path.join(workdir, "runs", f"{name}_{best}"), results[best], record
