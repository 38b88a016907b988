"""Where the CPU step's time goes: each convolution of the default UNet and heads, forward,
input gradient and weight gradient, in XLA (JAX: `lax.conv_general_dilated` as is, and
ee_jax/models/conv.py's 'auto', what the model runs) and in eager PyTorch, side by side.

The shapes are the default pre-training step's (two views of a batch of tiles in one pass:
64 images at 64 x 64 by default). Each figure is the median of `--repeats` timed calls
after one untimed call; JAX's are jitted programs of one convolution (or its VJP) alone.

  python benchmarks/conv_grads.py                    # the table (needs torch for its columns)
  python benchmarks/conv_grads.py --images 16 --tile 32 --repeats 3
  XLA_FLAGS=--xla_cpu_experimental_onednn_fusion_type=individual_convolution \\
    python benchmarks/conv_grads.py                  # try an XLA CPU option
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ee_jax.models import conv as ee_conv  # noqa: E402
from ee_jax.runtime import conv_choice  # noqa: E402

try:
  import torch  # noqa: E402
  import torch.nn.functional as F  # noqa: E402
except ImportError:
  torch = None


def unet_convs(widths=(32, 64, 128, 256), bands=13, tile=64):
  """(name, size, c_in, c_out) of every 3x3 conv of the default UNet (the row order)."""
  out, prev, size = [], bands, tile
  for i, w in enumerate(widths):
    if i:
      size = -(-size // 2)
    out += [(f"enc{i}.0", size, prev, w), (f"enc{i}.1", size, w, w)]
    prev = w
  for i in reversed(range(len(widths) - 1)):
    size = -(-tile // 2 ** i)
    out += [(f"up{i}", size, prev, widths[i]), (f"dec{i}.0", size, 2 * widths[i], widths[i]),
            (f"dec{i}.1", size, widths[i], widths[i])]
    prev = widths[i]
  return out


def head_convs(widths=(32, 64, 128, 256), features=64, proj_dim=128, bands=13, tile=64):
  """(name, size, c_in, c_out) of the 1x1 convs: the UNet's output, the projection head and
  the masked objective's reconstruction head."""
  return [("out", tile, widths[0], features), ("proj.0", tile, features, features),
          ("proj.1", tile, features, proj_dim), ("recon", tile, features, bands)]


def _median_ms(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def jax_times(n, size, cin, cout, k, repeats, impl):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, jnp.float32)
  g = jnp.asarray(rng.normal(size=(n, size, size, cout)), jnp.float32)
  conv_fn = ee_conv.make_conv_general_dilated(impl)
  conv = lambda w, x: conv_fn(   # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = jax.jit(conv)
  dx = jax.jit(lambda w, x, g: jax.vjp(lambda x: conv(w, x), x)[1](g)[0])
  dw = jax.jit(lambda w, x, g: jax.vjp(lambda w: conv(w, x), w)[1](g)[0])
  return (_median_ms(lambda: fwd(w, x).block_until_ready(), repeats),
          _median_ms(lambda: dx(w, x, g).block_until_ready(), repeats),
          _median_ms(lambda: dw(w, x, g).block_until_ready(), repeats))


def torch_times(n, size, cin, cout, k, repeats, channels_last):
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(n, cin, size, size).contiguous(memory_format=fmt).requires_grad_(True)
  w = (0.05 * torch.randn(cout, cin, k, k)).contiguous(memory_format=fmt).requires_grad_(True)
  g = torch.randn(n, cout, size, size).contiguous(memory_format=fmt)

  def fwd():
    with torch.no_grad():
      F.conv2d(x, w, padding=k // 2)

  y = F.conv2d(x, w, padding=k // 2)

  def grad(of):
    torch.autograd.grad(y, of, g, retain_graph=True)

  return (_median_ms(fwd, repeats), _median_ms(lambda: grad(x), repeats),
          _median_ms(lambda: grad(w), repeats))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--images", type=int, default=64, help="images a pass (2 views x batch)")
  p.add_argument("--tile", type=int, default=64)
  p.add_argument("--bands", type=int, default=13)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every CPU")
  args = p.parse_args()
  conv_choice.install()   # 'auto' as launch.py runs it
  if torch is not None:
    torch.set_num_threads(args.threads or os.cpu_count())
  cols = ["conv", "HxW", "cin->cout", "XLA fwd", "XLA dx", "XLA dw",
          "conv.py fwd", "conv.py dx", "conv.py dw"]
  if torch is not None:
    cols += ["torch fwd", "torch dx", "torch dw", "torch-CL fwd", "torch-CL dx", "torch-CL dw"]
  print(f"ms per call, {args.images} images, {os.cpu_count()} CPUs, jax {jax.__version__}"
        + (f", torch {torch.__version__}" if torch is not None else " (no torch)")
        + f"; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(" | ".join(cols))
  print(" | ".join("---" for _ in cols))
  totals = np.zeros(len(cols) - 3)
  convs = ([c + (3,) for c in unet_convs(bands=args.bands, tile=args.tile)]
           + [c + (1,) for c in head_convs(bands=args.bands, tile=args.tile)])
  for name, size, cin, cout, k in convs:
    row = list(jax_times(args.images, size, cin, cout, k, args.repeats, "xla"))
    row += jax_times(args.images, size, cin, cout, k, args.repeats, "auto")
    if torch is not None:
      row += torch_times(args.images, size, cin, cout, k, args.repeats, False)
      row += torch_times(args.images, size, cin, cout, k, args.repeats, True)
    totals += row
    print(" | ".join([name, f"{size}x{size}", f"{cin}->{cout}"] + [f"{t:.1f}" for t in row]),
          flush=True)
  print(" | ".join(["total", "", ""] + [f"{t:.0f}" for t in totals]))


if __name__ == "__main__":
  main()
