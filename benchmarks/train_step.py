"""Pre-training step time and pixels/s, compile time printed separately.

Default model (configs/defaults.py), tiles 64x64x13 (T=1), per-device batch 32, all local
devices (pmap). Achieved FLOP/s come from the compiled step's own cost analysis.

  python benchmarks/train_step.py [--per_device_batch 32] [--steps 10] [--dtype bfloat16]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import defaults  # noqa: E402
from ee_jax import augment, models, parallel  # noqa: E402
from ee_jax.train import optim  # noqa: E402
from ee_jax.train.pretrain_step import init_state, make_pretrain_step  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--per_device_batch", type=int, default=32)
  p.add_argument("--tile", type=int, default=64)
  p.add_argument("--bands", type=int, default=13)
  p.add_argument("--dates", type=int, default=1)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = p.parse_args()

  c = defaults.get_base_config()
  c.model.dtype = args.dtype
  c.augment.crop_size = args.tile
  model = models.build_pretrain_model(c.model)
  aug = augment.AugmentConfig.from_config(c.augment)
  tx, schedule = optim.make_optimizer(c.optim, 1000)
  state = init_state(model, tx, jax.random.PRNGKey(0), aug,
                     (args.dates, args.tile, args.tile, args.bands))
  n_dev = jax.local_device_count()
  mean, std = np.full(args.bands, 1000.0), np.full(args.bands, 500.0)
  step = parallel.pmap_step(make_pretrain_step(model, tx, schedule, mean, std, aug, c.loss),
                            donate_argnums=(0,))
  rng = np.random.default_rng(0)
  b = args.per_device_batch
  batch = {
      "image": rng.integers(1, 4000, (n_dev, b, args.dates, args.tile, args.tile, args.bands),
                            dtype=np.uint16),
      "valid": np.ones((n_dev, b, args.dates, args.tile, args.tile), bool),
      "index": np.arange(n_dev * b, dtype=np.int64).reshape(n_dev, b),
  }
  p_state, keys = parallel.replicate(state), parallel.replicate(jax.random.PRNGKey(1))
  batch = jax.device_put(parallel.shard(
      {k: v.reshape((n_dev * b,) + v.shape[2:]) for k, v in batch.items()}))

  t0 = time.perf_counter()
  compiled = step.lower(p_state, batch, keys).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  p_state, m = compiled(p_state, batch, keys)  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    p_state, m = compiled(p_state, batch, keys)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / args.steps
  tiles = n_dev * b
  print(f"device: {jax.devices()[0].device_kind} x{n_dev} ({jax.default_backend()}), "
        f"params {models.count_params(state.params):,}, dtype {args.dtype}")
  print(f"pretrain step: tiles {args.tile}x{args.tile}x{args.bands} T={args.dates}, "
        f"per-device batch {b}, global batch {tiles}")
  print(f"compile {compile_s:.1f} s | step {dt * 1e3:.1f} ms | {tiles / dt:.1f} tiles/s | "
        f"{tiles * args.tile ** 2 / dt / 1e6:.2f} Mpx/s | "
        f"{flops * n_dev / dt / 1e12:.3f} TFLOP/s achieved (cost analysis, all devices)")


if __name__ == "__main__":
  main()
