"""Compiled steps kept for the next run in the same process that builds the same step.

Why: a study fine-tunes its runs one after the other in one process, and each run built its
steps afresh, so JAX traced them again and fetched them from the compilation cache: about
3 s for each of a run's three programs (head-alone step, full step, evaluation) on 2 CPU
cores, a sixth of a default study run. What distinguishes the runs of a study (seed, label
fraction, initial weights) reaches a step as its arguments, not in its program; runs whose
steps are built from the same ingredients now share one compiled step.

The ingredients are given by the caller: everything the step is built from (the model's
config, optimiser config, schedule length, normalisation, loss settings...). A missing one
would hand a run another run's program, so callers pass whole config sections rather than
chosen fields.
"""

import collections
import json
from typing import Callable

import numpy as np

# Steps kept at most (least recently used dropped first): a study needs three per distinct
# model and recipe; each holds its compiled program in memory.
MAX_KEPT = 12

_kept: "collections.OrderedDict[str, object]" = collections.OrderedDict()


def _plain(value):
  """JSON form of arrays and ConfigDicts inside the ingredients."""
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if hasattr(value, "__array__"):   # numpy and JAX arrays and scalars
    return np.asarray(value).tolist()
  raise TypeError(f"shared_steps: cannot key a step on a {type(value).__name__}")


def reuse(kind: str, ingredients: dict, build: Callable[[], object]):
  """The step built earlier in this process from equal `ingredients`, else `build()`."""
  key = kind + ":" + json.dumps(ingredients, sort_keys=True, default=_plain)
  if key in _kept:
    _kept.move_to_end(key)
    return _kept[key]
  step = build()
  _kept[key] = step
  while len(_kept) > MAX_KEPT:
    _kept.popitem(last=False)
  return step


def clear() -> None:
  """Drops every kept step (and with it its compiled program)."""
  _kept.clear()
