"""Pre-training objectives: a weighted set chosen by name in `config.loss.weights`.

Each objective is one module here, `ee_jax/objectives/<name>.py`, defining `OBJECTIVE`: an
`Objective` (base.py) that says what config section it has, which head it adds to the
pre-training model, what it needs from the views and the loss it computes from the step's
one forward pass. The registry below finds them by module name; the model's heads
(`models.build_pretrain_model`) and the step (ee_jax/train/pretrain.py) ask it, so adding
an objective is one new module plus its weight in a config (`config.loss.weights.<name>`).
- `infonce`: dense InfoNCE between the views' embeddings of the same ground pixel (the
  paper's contrastive core).
- `masked`: hide dates, band groups and patches of each view's input and reconstruct the
  normalised input there.
- `vicreg`: negative-free invariance between the pairs, with variance and covariance terms
  against collapse.
- `barlow`: Barlow Twins per pixel pair: the views agree dimension by dimension, the
  dimensions decorrelated over the global batch of pairs.
- `prototypes`: swapped prediction of Sinkhorn cluster codes over K learnt prototypes, so
  pixels of different fields that look alike share a code.

Pair sampling (`num_anchors`, `positive_jitter`, `positive_not_self`; pairs.py) and
InfoNCE's own `temperature` / `exclude_radius` sit at the top of `config.loss`, as before;
each other objective has its own section (`config.loss.masked`, ...). A config without
`weights` (older runs) means InfoNCE alone.
"""

import importlib
import pkgutil

import ml_collections

from ee_jax.errors import ConfigError
from ee_jax.objectives import pairs
from ee_jax.objectives.base import Head, Objective, Pairs, Shared

# The objectives of this package in the order the step adds their loss terms (the order
# from before the registry, so results stay bit-identical); any other module here that
# defines OBJECTIVE follows in name order.
BUILTIN = ("infonce", "masked", "vicreg", "prototypes")

_REGISTRY: dict = {}


def register(objective: Objective) -> Objective:
  """Adds (or replaces) an objective under `objective.name`; returns it."""
  if not objective.name:
    raise ValueError(f"{type(objective).__name__}: an objective needs a name")
  _REGISTRY[objective.name] = objective
  return objective


def unregister(name: str) -> None:
  """Removes an objective added with `register` (tests)."""
  _REGISTRY.pop(name, None)


def _discover() -> None:
  found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg)
  for name in (*BUILTIN, *(n for n in found if n not in BUILTIN)):
    objective = getattr(importlib.import_module(f"{__name__}.{name}"), "OBJECTIVE", None)
    if objective is not None:
      register(objective)


def names() -> tuple:
  """Every registered objective's name, in the order their terms are summed."""
  return tuple(_REGISTRY)


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise ConfigError(f"config.loss.weights: unknown objective '{name}'; known: {list(names())}")
  return _REGISTRY[name]


def default_config() -> ml_collections.ConfigDict:
  """`config.loss`: weights per objective (0 = off) and each objective's section."""
  c = pairs.default_config()
  for objective in _REGISTRY.values():
    if objective.section is None:
      c.update(objective.default_config())
  c.weights = ml_collections.ConfigDict(
      {name: float(objective.default_weight) for name, objective in _REGISTRY.items()})
  for objective in _REGISTRY.values():
    if objective.section is not None:
      c[objective.section] = objective.default_config()
  return c


def active(loss_cfg) -> dict:
  """{name: weight} of the objectives with a weight > 0, in registry order. A name that
  is not registered is an error where its weight is > 0 (a weight of 0 turns nothing on)."""
  weights = loss_cfg.get("weights") if loss_cfg is not None else None
  if weights is None:
    return {"infonce": 1.0}
  weights = {k: float(v) for k, v in dict(weights).items()}
  unknown = sorted(k for k, v in weights.items() if k not in _REGISTRY and v > 0)
  if unknown:
    raise ConfigError(f"config.loss.weights: unknown objectives {unknown}; "
                      f"known: {list(names())}")
  out = {n: weights[n] for n in _REGISTRY if weights.get(n, 0.0) > 0}
  if not out:
    raise ConfigError("config.loss.weights: every weight is 0; give at least one objective "
                      f"a positive weight ({list(names())})")
  return out


def heads(loss_cfg) -> tuple:
  """The heads the active objectives add to the pre-training model, in registry order
  (none without `loss_cfg`: the projection head alone)."""
  if loss_cfg is None:
    return ()
  found = (get(name).head(loss_cfg) for name in active(loss_cfg))
  return tuple(head for head in found if head is not None)


_discover()

__all__ = ["BUILTIN", "Head", "Objective", "Pairs", "Shared", "active", "default_config",
           "get", "heads", "names", "register", "unregister"]
