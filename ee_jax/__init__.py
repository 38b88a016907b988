"""Embedding Earth in JAX: dense contrastive pre-training on satellite imagery.

`ee_jax.load_pretrained(path)` and `ee_jax.embed(array, model)` (ee_jax/api.py) use a
checkpoint's backbone in your own code; they load JAX on first use, so importing the
package stays cheap.
"""

__version__ = "0.1.0"


def __getattr__(name):
  if name in ("load_pretrained", "embed", "Pretrained"):
    from ee_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f"module 'ee_jax' has no attribute '{name}'")
