"""Classical baselines of the label-fraction study, chosen by name (`study.baselines`).

Each classifier is one module here defining `NAME`, `USES_INDICES` (whether it gets the
normalised-difference indices) and `fit(x, y, num_classes, seed) -> predict`; the registry
is every such module, so adding one is its module plus its name in a config. `linear`:
softmax regression (linear.py); `lightgbm`: gradient-boosted trees (trees.py). The shared
per-pixel features are in features.py, a run (tiles, pixels, fit, test scores) in runner.py.
"""

import importlib
import pkgutil

from ee_jax.errors import ConfigError


def _discover() -> dict:
  """{NAME: module} of the modules of this package that define NAME and fit."""
  found = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    module = importlib.import_module(f"{__name__}.{info.name}")
    if isinstance(getattr(module, "NAME", None), str) and callable(getattr(module, "fit", None)):
      found[module.NAME] = module
  return found


CLASSIFIERS = _discover()


def get(name: str, where: str = "config.study.baselines"):
  """The classifier module named `name`; an unknown name is one error naming `where` (the
  setting it came from) and the known."""
  if name not in CLASSIFIERS:
    raise ConfigError(f"{where}: unknown '{name}'; known: {sorted(CLASSIFIERS)}")
  return CLASSIFIERS[name]


def describe(names, indices: dict) -> str:
  """A sentence on the features, each classifier's parameters (its DESCRIPTION) and the
  pixel cap; `indices`: {name: the indices it used}."""
  from ee_jax.baselines import runner  # pylint: disable=import-outside-toplevel
  parts = []
  for name in names:
    text = f"`{name}`: {get(name).DESCRIPTION}"
    if get(name).USES_INDICES:
      used = indices.get(name) or []
      text += (f", with the indices {', '.join(i.upper() for i in used)} per date" if used
               else ", no index (the dataset lacks their bands)")
    parts.append(text)
  return ("Features per pixel: every date's bands normalised with the dataset's train-split "
          "mean/std (unobserved dates at 0) and their 3x3 mean (edges replicated). "
          + "; ".join(parts) + f". At most {runner.MAX_PIXELS_PER_CLASS:,} training pixels a "
          "class, sampled with the seed; pixels unobserved on every date or labelled ignore "
          "are neither trained on nor scored.")
