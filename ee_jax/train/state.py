"""The train state: plain data (step, params, opt_state, and the EMA teacher of the latent
objective where it is on) so it can be replicated, checkpointed and restored as a pytree;
the optimizer itself lives in the step's closure. No BatchNorm anywhere, hence no batch
statistics. `teacher` None adds nothing to the tree: older checkpoints restore as before."""

from typing import Any

import flax.struct
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  teacher: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, teacher=None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               teacher=teacher)

  def apply_gradients(self, grads, tx: optax.GradientTransformation) -> "TrainState":
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)
