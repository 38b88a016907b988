"""Several training runs of one model as one compiled step.

The runs' states, batches, keys and normalisations are stacked on a leading [runs] axis
(inside the device axis of `pmap`), and `over_runs` maps a one-run step over it. Each run
keeps its own numbers: nothing is reduced across the run axis.
"""

from typing import Callable, Sequence

import jax
import numpy as np


def stack(trees: Sequence) -> object:
  """Host pytrees of identical structure -> one pytree with a leading [runs] axis."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack(tree, i: int):
  """Run `i` of a stacked host pytree."""
  return jax.tree.map(lambda x: x[i], tree)


def over_runs(step: Callable, vmap_width: int) -> Callable:
  """`step(*args)` of one run -> the same step over args with a leading [runs] axis.

  `vmap_width` runs are vectorised at a time (`jax.vmap`: one wide step, what a GPU or
  TPU wants); groups of that many follow one another inside the same program
  (`jax.lax.map`), which bounds the memory of a wide group. 0 = every run at once.
  On XLA CPU neither form pays (docs/scaling.md): a vectorised convolution over per-run
  kernels becomes a grouped convolution, about 3x slower per run than the runs alone (a
  study group of 3 runs took as long as the runs one by one), and runs looped with
  `lax.map` took 2.6x as long.
  """
  if vmap_width < 0:
    raise ValueError(f"vmap_width must be >= 0; got {vmap_width}")

  def stepped(*args):
    runs = jax.tree.leaves(args)[0].shape[0]
    if vmap_width == 0 or vmap_width >= runs:
      return jax.vmap(step)(*args)
    return jax.lax.map(lambda a: step(*a), args,
                       batch_size=None if vmap_width == 1 else vmap_width)

  return stepped
