"""Dense prototypes with swapped prediction (the `prototypes` objective; SwAV, Caron et
al. 2020, applied per pixel pair).

Each matched pair's embeddings are scored against K learnt prototypes; the codes of one
view come from Sinkhorn-Knopp over the whole global batch of pairs (equal use of the
prototypes, so no collapse), and the other view's softmax over prototypes must predict
them. Pixels of different fields and images that look alike are pulled towards the same
prototype: a cross-instance signal that instance discrimination lacks, with no labels.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ee_jax.models.heads import Prototypes
from ee_jax.objectives.base import Head, Objective
from ee_jax.objectives.pairs import collectives


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num = 32              # prototypes K
  c.temperature = 0.1     # of the predicting softmax
  c.epsilon = 0.05        # Sinkhorn entropy regularisation (smaller = harder codes)
  c.sinkhorn_iters = 3
  return c


def sinkhorn(scores, w, epsilon: float, iters: int):
  """Soft codes [K_pairs, P] of scores [K_pairs, P] with weights w [K_pairs] (0 = pair not
  counted): each counted pair's codes sum to 1 and the prototypes are used equally."""
  q = jnp.exp((scores - jnp.max(scores)) / epsilon) * w[:, None]
  n, p = jnp.maximum(w.sum(), 1.0), scores.shape[1]
  for _ in range(iters):
    q = q / jnp.maximum(q.sum(axis=0, keepdims=True), 1e-30) / p    # prototypes: 1/P each
    q = q / jnp.maximum(q.sum(axis=1, keepdims=True), 1e-30) / n    # pairs: 1/N each
  return q * n


def prototype_loss(s1, s2, amask, cfg, axis_name=None):
  """s1, s2 [B, N, P] cosine scores of the pairs' embeddings against the prototypes,
  amask bool [B, N]. Returns (loss: this device's share of the global mean, metrics)."""
  gather, psum, dev, ndev = collectives(axis_name)
  b, n, p = s1.shape
  w = amask.astype(jnp.float32)
  wg = gather(w).reshape(-1)
  sg = jax.lax.stop_gradient

  def codes(s):
    q = sinkhorn(sg(gather(s).reshape(-1, p)), wg, cfg.epsilon, cfg.sinkhorn_iters)
    return jax.lax.dynamic_index_in_dim(q.reshape(ndev, b, n, p), dev, 0, keepdims=False)

  q1, q2 = codes(s1), codes(s2)
  logp1 = jax.nn.log_softmax(s1 / cfg.temperature, axis=-1)
  logp2 = jax.nn.log_softmax(s2 / cfg.temperature, axis=-1)
  ce = -0.5 * (jnp.sum(q2 * logp1, axis=-1) + jnp.sum(q1 * logp2, axis=-1))   # [B, N]
  count = jnp.maximum(psum(w.sum()), 1.0)
  local = jnp.sum(ce * w)
  usage = psum(jnp.sum(jax.nn.softmax(s1 / cfg.temperature) * w[..., None], axis=(0, 1)))
  usage = usage / jnp.maximum(usage.sum(), 1e-12)
  perplexity = jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-12)))
  agree = jnp.sum((jnp.argmax(s1, -1) == jnp.argmax(s2, -1)) * w)
  metrics = dict(proto=psum(sg(local)) / count, proto_used=sg(perplexity) / p,
                 proto_agree=psum(sg(agree)) / count)
  return local / count * ndev, metrics


def _prototype_head(x, out, *, dtype, conv_impl, num):
  """Cosine scores [B, H, W, K] of the embeddings `z` against K learnt prototypes."""
  del x, dtype, conv_impl   # the scores are computed in fp32 on the fp32 embeddings
  return {"scores": Prototypes(num, name="prototypes")(out["z"])}


class DensePrototypes(Objective):
  """Compares the prototype scores (`scores`) at the matched pairs."""
  name, section, compares = "prototypes", "prototypes", "scores"

  def default_config(self):
    return default_config()

  def head(self, loss_cfg):
    return Head(_prototype_head, (("num", int(loss_cfg.prototypes.num)),))

  def loss(self, shared, loss_cfg, axis_name):
    pairs = shared.pairs
    return prototype_loss(*pairs.take("scores"), pairs.amask, loss_cfg.prototypes, axis_name)


OBJECTIVE = DensePrototypes()
