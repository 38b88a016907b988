"""Compiled steps shared by the runs of one process (ee_jax/train/step_cache.py)."""

import numpy as np
import pytest

from ee_jax.train import step_cache


def test_equal_ingredients_share_a_step_and_any_difference_builds_another():
  step_cache.clear()
  built = []

  def build():
    built.append(object())
    return built[-1]

  base = {"model": {"widths": [8, 16]}, "mean": np.array([1.0, 2.0]), "steps": 10}
  first = step_cache.reuse("finetune", base, build)
  assert step_cache.reuse("finetune", dict(base, mean=np.array([1.0, 2.0])), build) is first
  assert step_cache.reuse("eval", base, build) is not first                 # another kind
  assert step_cache.reuse("finetune", dict(base, mean=np.array([1.0, 2.5])), build) is not first
  assert step_cache.reuse("finetune", dict(base, model={"widths": [8, 32]}), build) is not first
  assert len(built) == 4
  with pytest.raises(TypeError, match="cannot key a step on a function"):
    step_cache.reuse("finetune", {"f": build}, build)
  step_cache.clear()
  assert step_cache.reuse("finetune", base, build) is not first


def test_the_least_recently_used_step_goes_first():
  step_cache.clear()
  steps = [step_cache.reuse("s", {"i": i}, object) for i in range(step_cache.MAX_KEPT)]
  assert step_cache.reuse("s", {"i": 0}, object) is steps[0]      # now the most recent
  step_cache.reuse("s", {"i": -1}, object)                          # one too many: drops i=1
  assert step_cache.reuse("s", {"i": 0}, object) is steps[0]
  assert step_cache.reuse("s", {"i": 1}, object) is not steps[1]
  step_cache.clear()
