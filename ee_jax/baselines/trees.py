"""`lightgbm`: gradient-boosted trees (LightGBM multiclass) on the per-pixel features with
the normalised-difference indices.

Fixed parameters (PARAMS, ROUNDS), no early stopping and no validation data: nothing is
tuned, so nothing can be tuned on the test split. `deterministic` with row-wise histograms
and a fixed seed: the same pixels give the same trees.
"""

import os

import numpy as np

NAME = "lightgbm"
USES_INDICES = True
ROUNDS = 200
PARAMS = {"objective": "multiclass", "num_leaves": 31, "learning_rate": 0.05,
          "min_data_in_leaf": 20, "deterministic": True, "force_row_wise": True,
          "verbose": -1}
DESCRIPTION = (f"LightGBM multiclass, {ROUNDS} rounds, {PARAMS['num_leaves']} leaves, learning "
               f"rate {PARAMS['learning_rate']}, deterministic, no early stopping")


def num_threads() -> int:
  """The cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def fit(x, y, num_classes: int, seed: int):
  """predict(x [n, D]) -> classes [n], from pixels x [n, D] with classes y [n]."""
  import lightgbm  # pylint: disable=import-outside-toplevel
  params = dict(PARAMS, num_class=num_classes, seed=seed, num_threads=num_threads())
  booster = lightgbm.train(params, lightgbm.Dataset(x, label=y, params={"verbose": -1}),
                           num_boost_round=ROUNDS)
  return lambda f: np.asarray(booster.predict(f)).reshape(len(f), num_classes).argmax(-1)
