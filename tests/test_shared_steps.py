"""Compiled steps shared by the runs of one process (ee_jax/runtime/shared_steps.py)."""

import numpy as np
import pytest

from ee_jax.runtime import shared_steps


def test_equal_ingredients_share_a_step_and_any_difference_builds_another():
  shared_steps.clear()
  built = []

  def build():
    built.append(object())
    return built[-1]

  base = {"model": {"widths": [8, 16]}, "mean": np.array([1.0, 2.0]), "steps": 10}
  first = shared_steps.reuse("finetune", base, build)
  assert shared_steps.reuse("finetune", dict(base, mean=np.array([1.0, 2.0])), build) is first
  assert shared_steps.reuse("eval", base, build) is not first                 # another kind
  assert shared_steps.reuse("finetune", dict(base, mean=np.array([1.0, 2.5])), build) is not first
  assert shared_steps.reuse("finetune", dict(base, model={"widths": [8, 32]}), build) is not first
  assert len(built) == 4
  with pytest.raises(TypeError, match="cannot key a step on a function"):
    shared_steps.reuse("finetune", {"f": build}, build)
  shared_steps.clear()
  assert shared_steps.reuse("finetune", base, build) is not first


def test_the_least_recently_used_step_goes_first():
  shared_steps.clear()
  steps = [shared_steps.reuse("s", {"i": i}, object) for i in range(shared_steps.MAX_KEPT)]
  assert shared_steps.reuse("s", {"i": 0}, object) is steps[0]      # now the most recent
  shared_steps.reuse("s", {"i": -1}, object)                          # one too many: drops i=1
  assert shared_steps.reuse("s", {"i": 0}, object) is steps[0]
  assert shared_steps.reuse("s", {"i": 1}, object) is not steps[1]
  shared_steps.clear()
