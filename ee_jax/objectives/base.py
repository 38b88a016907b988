"""The one interface every pre-training objective implements (ee_jax/objectives/<name>.py).

An objective module defines `OBJECTIVE`, an instance of a subclass of `Objective`; the
registry (ee_jax/objectives/__init__.py) finds it by the module's name, and the pre-training
model (its heads) and step (its views, pairs and loss) ask it, so neither names objectives.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax.numpy as jnp
import ml_collections

from ee_jax.objectives.pairs import take_pixels


class Objective:
  """One objective: its config, its head, what it needs from the views, its loss.

  `name`: its key in `config.loss.weights` (and its module's name).
  `section`: where its config sits: `config.loss.<section>`, or None for keys at the top
    of `config.loss` (InfoNCE's, from before objectives had sections).
  `compares`: the model output compared at matched pixel pairs ('z', 'proj', 'scores',
    or a head's output); None when the objective needs no pairs.
  """
  name: str = ""
  section: Optional[str] = None
  compares: Optional[str] = None
  default_weight: float = 0.0   # its weight in the default config (InfoNCE: 1)

  def default_config(self) -> ml_collections.ConfigDict:
    """Its config section (or its top-level keys when `section` is None)."""
    return ml_collections.ConfigDict()

  def head(self, loss_cfg) -> Optional["Head"]:
    """The head it adds to the pre-training model (None: it needs none)."""
    del loss_cfg
    return None

  def prepare_views(self, keys, v1, v2, loss_cfg):
    """The two views as it needs them before the forward pass (e.g. parts hidden), from
    per-example keys [B]; returns (v1, v2, extras), extras joining `Shared.extras`."""
    del keys, loss_cfg
    return v1, v2, {}

  def loss(self, shared: "Shared", loss_cfg, axis_name):
    """(loss: this device's share, whose pmean over `axis_name` is the global loss,
    metrics: already global) from the step's one forward pass."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Head:
  """A head an objective adds to `models.PretrainModel`: `build(x, out, dtype, conv_impl)`
  runs inside the model's `__call__` (so the modules it creates are the model's, named as
  it names them) and returns the outputs it adds to `out`. Frozen and hashable: it is a
  field of a Flax module."""
  build: Callable[..., dict]
  options: tuple = ()   # (name, value) pairs passed to `build` as keywords

  def __call__(self, x, out, dtype: Any, conv_impl: str) -> dict:
    return self.build(x, out, dtype=dtype, conv_impl=conv_impl, **dict(self.options))


@dataclasses.dataclass
class Pairs:
  """Matched pixel pairs of the two views: anchors idx [B, N] in view 1, positives idx2
  [B, N] in view 2, amask [B, N] (pairs that count), `width` of the maps, and each compared
  map of both views in the same frame (`first`, `second`: {output name: [B, H, W, E]})."""
  idx: Any
  idx2: Any
  amask: Any
  width: int
  first: dict
  second: dict

  def take(self, name: str):
    """(a1, a2) [B, N, E] float32: the map `name` of each view at the pairs."""
    return (take_pixels(self.first[name], self.idx).astype(jnp.float32),
            take_pixels(self.second[name], self.idx2).astype(jnp.float32))


@dataclasses.dataclass
class Shared:
  """What the step computes once for every objective: the model's outputs on both views
  (view 1's examples first, then view 2's), the views' fields, the extras objectives'
  `prepare_views` added, the matched pairs (None when no objective compares pairs), and
  the dataset's per-band `mean` and `std` [C] (digital numbers = normalised x std + mean)."""
  out: dict
  view: Callable[[str], Any]   # field name -> both views' values concatenated, [2B, ...]
  extras: dict
  pairs: Optional[Pairs] = None
  mean: Any = None
  std: Any = None
