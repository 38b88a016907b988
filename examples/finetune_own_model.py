"""Your own Flax segmentation model on a pre-trained backbone, fine-tuned with optax.

    python examples/finetune_own_model.py workdirs/demo/pretrain_s2 [--steps 50]

The backbone comes from a checkpoint (`ee_jax.load_pretrained`), a 1x1 convolution head is
yours, and both are trained on a few labelled pixels of an array. The array here is made
up (two "fields" with different spectra) so the script runs anywhere in seconds; put your
own [T, H, W, C] digital numbers, band names and labels (-1 = unlabelled) in their place.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ee_jax


class Segmenter(nn.Module):
  """The pre-trained backbone (its params live under 'backbone') and a new 1x1 head."""
  backbone: nn.Module
  num_classes: int

  def setup(self):
    self.head = nn.Conv(self.num_classes, (1, 1))

  def __call__(self, x, weight):
    return self.head(self.backbone(x, weight))


def made_up_data(pre, size=32, per_class=8, seed=0):
  """(digital numbers [T, H, W, C], labels [H, W] with -1 where unlabelled): left and
  right halves with spectra one std below / above the checkpoint's band means."""
  rng = np.random.default_rng(seed)
  t = pre.num_dates or 1
  side = np.arange(size) >= size // 2                               # [W]: class 1 on the right
  level = pre.mean + np.where(side[:, None], 1.0, -1.0) * pre.std    # [W, C]
  image = level + rng.normal(0, 0.2, (t, size, size, len(pre.bands))) * pre.std
  image = np.clip(image, 1, 65535).astype(np.uint16)
  labels = np.full((size, size), -1)
  for cls in (0, 1):
    cols = np.flatnonzero(side == cls)
    labels[rng.integers(0, size, per_class), rng.choice(cols, per_class)] = cls
  return image, labels


def main(checkpoint, steps=50, learning_rate=3e-3, seed=0, size=32):
  """Fine-tunes on the made-up data; returns the loss of every step."""
  pre = ee_jax.load_pretrained(checkpoint)
  image, labels = made_up_data(pre, size=size, seed=seed)
  x, weight = pre.preprocess(image)            # the checkpoint's bands, statistics, nodata
  model = Segmenter(backbone=pre.backbone, num_classes=2)
  # The pre-trained weights, and a new head (initialised alone: `model.init` would also
  # draw backbone weights only to throw them away, and compiles slowly on a CPU).
  head = nn.Conv(model.num_classes, (1, 1)).init(jax.random.key(seed),
                                                 jnp.zeros((1, 1, 1, pre.features)))
  params = {"backbone": pre.params, "head": head["params"]}
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)
  labelled = jnp.asarray(labels >= 0)[None]
  target = jnp.asarray(np.maximum(labels, 0))[None]

  def loss_fn(params):
    logits = model.apply({"params": params}, x, weight)              # [1, H, W, 2]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    return jnp.sum(losses * labelled) / jnp.sum(labelled)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
    if i % 10 == 0 or i == steps - 1:
      print(f"step {i}: loss {history[-1]:.4f}")
  return history


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="a pre-training workdir or checkpoint folder")
  parser.add_argument("--steps", type=int, default=50)
  args = parser.parse_args()
  main(args.checkpoint, args.steps)
