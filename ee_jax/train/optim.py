"""Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping, and weight decay
on conv/dense kernels only (decaying GroupNorm scales and biases only hurts)."""

import jax
import ml_collections
import optax

from ee_jax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
  """Optimizer config, to embed as `config.optim`."""
  c = ml_collections.ConfigDict()
  c.learning_rate = 1e-3     # peak learning rate, reached after warmup
  c.warmup_steps = 500
  c.end_lr_factor = 0.0      # final lr = learning_rate * end_lr_factor
  c.weight_decay = 1e-4      # decoupled (AdamW), kernels only
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.grad_clip_norm = 1.0     # global-norm clipping; 0 = off
  return c


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """0 -> learning_rate linearly over warmup_steps, then cosine to end_lr_factor x peak."""
  if total_steps < 1:
    raise ConfigError(f"total_steps must be >= 1; got {total_steps}")
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.learning_rate * cfg.end_lr_factor)


def decay_mask(params):
  """True for leaves named 'kernel' (conv/dense weights); False for biases and norm scales."""
  def is_kernel(path, _):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg, total_steps: int):
  """(optax transformation, schedule). The schedule is returned too, for logging the lr."""
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
