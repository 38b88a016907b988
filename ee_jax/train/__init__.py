"""Training: optimizer, train state, and the per-device pre-training/eval steps."""

from ee_jax.train.optim import decay_mask, make_optimizer, make_schedule
from ee_jax.train.pretrain import init_state, make_eval_step, make_pretrain_step
from ee_jax.train.state import TrainState

__all__ = ["TrainState", "decay_mask", "init_state", "make_eval_step",
           "make_optimizer", "make_pretrain_step", "make_schedule"]
