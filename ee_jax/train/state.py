"""The train state: plain data (step, params, opt_state) so it can be replicated,
checkpointed and restored as a pytree; the optimizer itself lives in the step's closure. No
BatchNorm anywhere, hence no batch statistics.

`teacher` is always None: it held the removed latent objective's EMA teacher (in git
history, last in commit 0c8bcc6). It stays because orbax restores only into the tree a
checkpoint was saved with, and every checkpoint written until then has the (empty) field;
without it none of them would resume (tests/test_registry.py)."""

from typing import Any

import flax.struct
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  teacher: Any = None   # always None; kept for the checkpoints' tree (see above)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def apply_gradients(self, grads, tx: optax.GradientTransformation) -> "TrainState":
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)
