"""`linear`: multinomial softmax regression of the per-pixel features (no indices).

Full-batch Adam from zero weights for a fixed number of steps with an L2 penalty on the
standardised features: deterministic for given pixels (the seed only picks the pixels).
Also benchmarks/feature_probe.py's probe.
"""

import numpy as np

NAME = "linear"
USES_INDICES = False
STEPS, LEARNING_RATE, L2 = 300, 0.05, 1e-4
DESCRIPTION = (f"softmax regression on standardised features, full-batch Adam, {STEPS} steps, "
               f"learning rate {LEARNING_RATE}, L2 {L2}")


def fit_probe(features, labels, num_classes, ignore_index, steps=STEPS, lr=LEARNING_RATE,
              l2=L2):
  """Softmax regression on standardised features of labelled pixels -> predict(features)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  d = features.shape[-1]
  x, y = features.reshape(-1, d), labels.reshape(-1)
  keep = y != ignore_index
  x, y = x[keep], y[keep].astype(np.int32)
  mu, sd = x.mean(0), x.std(0) + 1e-6
  xs = jnp.asarray((x - mu) / sd)
  params = (jnp.zeros((d, num_classes)), jnp.zeros(num_classes))
  tx = optax.adam(lr)

  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(xs @ p[0] + p[1], y).mean()
    return ce + l2 * jnp.sum(p[0] ** 2)

  @jax.jit
  def update(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = update(params, state)
  return lambda f: np.asarray(jnp.argmax(((f.reshape(-1, d) - mu) / sd) @ params[0]
                                         + params[1], axis=-1))


def fit(x, y, num_classes: int, seed: int):  # pylint: disable=unused-argument
  """predict(x [n, D]) -> classes [n], from pixels x [n, D] with classes y [n]."""
  return fit_probe(x, y, num_classes, ignore_index=-1)
