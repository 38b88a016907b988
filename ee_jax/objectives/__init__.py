"""Pre-training objectives: a weighted set chosen by name in `config.loss.weights`.

Each objective is a small module with `default_config()` and a loss on what the pre-training
step shares between them (the two views, one forward pass, the matched pixel pairs):
- `infonce`: dense InfoNCE between the views' embeddings of the same ground pixel (the
  paper's contrastive core; ee_jax/losses.py).
- `masked`: hide dates, band groups and patches of each view's input and reconstruct the
  normalised input there (ee_jax/objectives/masked.py).
- `vicreg`: negative-free invariance between the pairs, with variance and covariance terms
  against collapse (ee_jax/objectives/vicreg.py).
- `prototypes`: swapped prediction of Sinkhorn cluster codes over K learnt prototypes, so
  pixels of different fields that look alike share a code (ee_jax/objectives/prototypes.py).
- `latent`: predict, from the hidden view (the masks of `config.loss.masked`), the features
  an EMA teacher computes on the whole view, normalised per channel
  (ee_jax/objectives/latent.py).

Anchor and positive sampling (`num_anchors`, `positive_jitter`, `positive_not_self`) and
InfoNCE's own `temperature` / `exclude_radius` sit at the top of `config.loss`, as before;
each other objective has its own section (`config.loss.masked`, ...). A config without
`weights` (older runs) means InfoNCE alone.
"""

import ml_collections

from ee_jax import losses
from ee_jax.errors import ConfigError
from ee_jax.objectives import latent, masked, prototypes, vicreg

NAMES = ("infonce", "masked", "vicreg", "prototypes", "latent")
HIDING_OBJECTIVES = ("masked", "latent")  # train on views with parts hidden
PAIR_OBJECTIVES = ("infonce", "vicreg", "prototypes")  # need matched pixel pairs


def default_config() -> ml_collections.ConfigDict:
  """`config.loss`: weights per objective (0 = off) and each objective's section."""
  c = losses.default_config()
  c.weights = ml_collections.ConfigDict({name: 0.0 for name in NAMES})
  c.weights.infonce = 1.0
  c.masked = masked.default_config()
  c.vicreg = vicreg.default_config()
  c.prototypes = prototypes.default_config()
  c.latent = latent.default_config()
  return c


def active(loss_cfg) -> dict:
  """{name: weight} of the objectives with a weight > 0, in NAMES order."""
  weights = loss_cfg.get("weights") if loss_cfg is not None else None
  if weights is None:
    return {"infonce": 1.0}
  weights = dict(weights)
  unknown = sorted(set(weights) - set(NAMES))
  if unknown:
    raise ConfigError(f"config.loss.weights: unknown objectives {unknown}; known: {list(NAMES)}")
  out = {n: float(weights[n]) for n in NAMES if float(weights.get(n, 0.0)) > 0}
  if not out:
    raise ConfigError("config.loss.weights: every weight is 0; give at least one objective "
                      f"a positive weight ({list(NAMES)})")
  return out


def head_sizes(loss_cfg):
  """(recon_hidden, num_prototypes, latent_hidden) of the PretrainModel heads the
  objectives need: -1 / 0 / -1 where an objective is off (no such head)."""
  if loss_cfg is None:
    return -1, 0, -1
  on = active(loss_cfg)
  recon = int(loss_cfg.masked.hidden) if "masked" in on else -1
  protos = int(loss_cfg.prototypes.num) if "prototypes" in on else 0
  predictor = -1
  if "latent" in on:
    latent.check_config(loss_cfg.latent)
    predictor = int(loss_cfg.latent.hidden)
  return recon, protos, predictor
