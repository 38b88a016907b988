"""Per-pixel VICReg between matched pairs (the `vicreg` objective; Bardes et al. 2022,
VICRegL for the dense form).

Invariance: mean squared distance between the projections (before L2 normalisation) of
the two views at each matched pair. Variance: hinge keeping every embedding dimension's std
over the global batch of pairs at >= 1. Covariance: off-diagonal covariance squared, summed
and divided by the width, decorrelating the dimensions. No negatives: pixels of other
fields of the same class are never pushed apart; the variance and covariance terms keep the
embedding from collapsing. Defaults keep VICReg's 25 : 25 : 1 ratio, scaled by 1/25.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ee_jax.objectives.base import Objective
from ee_jax.objectives.pairs import collectives


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.invariance = 1.0
  c.variance = 1.0
  c.covariance = 0.04
  return c


def _variance_covariance(x, w):
  """Hinge on per-dimension std and the off-diagonal covariance term of samples x [K, E]
  weighted 0/1 by w [K]; also the mean std (a collapse meter)."""
  n = jnp.maximum(w.sum(), 2.0)
  mean = jnp.sum(x * w[:, None], axis=0) / n
  xc = (x - mean) * w[:, None]
  cov = xc.T @ xc / (n - 1.0)
  var = jnp.diagonal(cov)
  std = jnp.sqrt(var + 1e-4)
  off = jnp.sum(cov * cov) - jnp.sum(var * var)
  return jnp.mean(jax.nn.relu(1.0 - std)), off / x.shape[1], jnp.mean(std)


def vicreg_loss(p1, p2, amask, cfg, axis_name=None):
  """p1, p2 [B, N, E] projections at matched pairs, amask bool [B, N]. Returns (loss,
  metrics); the loss's pmean over devices is the loss of the global batch (the variance
  and covariance terms see every device's pairs through all_gather)."""
  gather, psum, _, ndev = collectives(axis_name)
  w = amask.astype(jnp.float32)
  count = jnp.maximum(psum(w.sum()), 1.0)
  inv_sum = jnp.sum(jnp.mean(jnp.square(p1 - p2), axis=-1) * w)
  invariance = inv_sum / count * ndev
  e = p1.shape[-1]
  wg = gather(w).reshape(-1)
  v1, c1, s1 = _variance_covariance(gather(p1).reshape(-1, e), wg)
  v2, c2, s2 = _variance_covariance(gather(p2).reshape(-1, e), wg)
  loss = (cfg.invariance * invariance + cfg.variance * 0.5 * (v1 + v2)
          + cfg.covariance * 0.5 * (c1 + c2))
  sg = jax.lax.stop_gradient
  metrics = dict(vicreg_inv=psum(sg(inv_sum)) / count, vicreg_var=sg(0.5 * (v1 + v2)),
                 vicreg_cov=sg(0.5 * (c1 + c2)), vicreg_std=sg(0.5 * (s1 + s2)))
  return loss, metrics


class VICReg(Objective):
  """Compares the projections before L2 normalisation (`proj`) at the matched pairs."""
  name, section, compares = "vicreg", "vicreg", "proj"

  def default_config(self):
    return default_config()

  def loss(self, shared, loss_cfg, axis_name):
    pairs = shared.pairs
    return vicreg_loss(*pairs.take("proj"), pairs.amask, loss_cfg.vicreg, axis_name)


OBJECTIVE = VICReg()
