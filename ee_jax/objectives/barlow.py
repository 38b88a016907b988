"""Per-pixel Barlow Twins between matched pairs (the `barlow` objective; Zbontar et al.
2021, applied to pixels as TESSERA and ST-BT do to a pixel's time series).

Each dimension of the two views' projections is standardised over the global batch of
pairs; the cross-correlation matrix C [E, E] between the views is pushed to the identity:
(1 - C_ii)^2 makes every dimension agree across the views, C_ij^2 (i != j) decorrelates
them, so the information is spread over all E dimensions instead of the few directions of
largest variance (what mean-squared reconstruction keeps). With views that see disjoint
dates (`augment.disjoint_dates`) what agrees is what the dates share: the ground.

The loss is divided by E (so its scale does not grow with the projector's width), and the
off-diagonal weight is `redundancy` / E (lambda = 1/E; Tsai et al. 2021 found it as good as
the paper's tuned 0.0051 at E = 8192).
"""

import jax
import jax.numpy as jnp
import ml_collections

from ee_jax.objectives.base import Objective
from ee_jax.objectives.pairs import collectives


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.redundancy = 1.0   # off-diagonal weight, in units of 1/E
  return c


def _standardise(x, w):
  """x [K, E] standardised per dimension over the samples weighted 0/1 by w [K]; rows
  with weight 0 become 0."""
  n = jnp.maximum(w.sum(), 2.0)
  mean = jnp.sum(x * w[:, None], axis=0) / n
  xc = (x - mean) * w[:, None]
  std = jnp.sqrt(jnp.sum(xc * xc, axis=0) / n + 1e-6)
  return xc / std, n


def barlow_loss(p1, p2, amask, cfg, axis_name=None):
  """p1, p2 [B, N, E] projections at matched pairs, amask bool [B, N]. Returns (loss:
  the global batch's, computed alike on every device from the gathered pairs, so its pmean
  is itself; as VICReg's variance and covariance terms), metrics)."""
  gather = collectives(axis_name)[0]
  e = p1.shape[-1]
  w = gather(amask.astype(jnp.float32)).reshape(-1)
  a, n = _standardise(gather(p1).reshape(-1, e), w)
  b, _ = _standardise(gather(p2).reshape(-1, e), w)
  c = a.T @ b / n
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
  loss = (on + cfg.redundancy / e * off) / e
  sg = jax.lax.stop_gradient
  metrics = dict(barlow_on=sg(on / e), barlow_off=sg(off / (e * (e - 1))),
                 barlow_agree=sg(jnp.mean(diag)))
  return loss, metrics


class BarlowTwins(Objective):
  """Compares the projections before L2 normalisation (`proj`) at the matched pairs."""
  name, section, compares = "barlow", "barlow", "proj"

  def default_config(self):
    return default_config()

  def loss(self, shared, loss_cfg, axis_name):
    pairs = shared.pairs
    return barlow_loss(*pairs.take("proj"), pairs.amask, loss_cfg.barlow, axis_name)


OBJECTIVE = BarlowTwins()
