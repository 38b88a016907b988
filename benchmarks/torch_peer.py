"""The default pre-training step written in eager PyTorch (CPU), as a yardstick for JAX.

The same network as `configs/defaults.py` builds for pre-training with the InfoNCE
objective (`--config.loss.weights.infonce=1`): UNet widths (32, 64, 128, 256), two 3x3
conv -> GroupNorm(8) -> ReLU per block, 2x2 max-pool with ceil (XLA's SAME), decoder of
bilinear resize to the skip's size -> 3x3 conv -> concat -> block, 1x1 conv to D = 64 ->
GroupNorm -> ReLU; projection head 1x1 64 -> 64 -> ReLU -> 128, L2-normalised. The step:
two views of every tile in one forward pass (a random flip and a per-tile gain and offset,
as cheap as the JAX step's photometric part), 64 anchor pixels per image, symmetric dense
InfoNCE over every view-2 key of the batch at temperature 0.1, global-norm clipping at 1
and AdamW (lr 1e-3, weight decay 1e-4). The parameter count printed must equal JAX's.

  pip install '.[torch_peer]'     # torch is a benchmark extra, never a package dependency
  python benchmarks/torch_peer.py --per_device_batch 32 --tile 64 --bands 13
  python benchmarks/torch_peer.py --channels_last --json
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
  sys.exit("benchmarks/torch_peer.py needs PyTorch: pip install '.[torch_peer]' "
           "(or pip install torch==2.13.0)")


def _gn(channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(math.gcd(8, channels), channels, eps=1e-6)   # flax's eps


class Block(nn.Sequential):
  def __init__(self, cin: int, cout: int, convs: int = 2):
    layers = []
    for i in range(convs):
      layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), _gn(cout), nn.ReLU()]
    super().__init__(*layers)


class UNet(nn.Module):
  def __init__(self, cin: int, widths=(32, 64, 128, 256), features: int = 64):
    super().__init__()
    self.enc = nn.ModuleList()
    prev = cin
    for w in widths:
      self.enc.append(Block(prev, w))
      prev = w
    self.up = nn.ModuleList()
    self.dec = nn.ModuleList()
    for i in reversed(range(len(widths) - 1)):
      self.up.append(nn.Conv2d(prev, widths[i], 3, padding=1))
      self.dec.append(Block(2 * widths[i], widths[i]))
      prev = widths[i]
    self.out = nn.Conv2d(prev, features, 1)
    self.out_norm = _gn(features)

  def forward(self, x):
    skips = []
    for i, block in enumerate(self.enc):
      if i:
        x = F.max_pool2d(x, 2, ceil_mode=True)
      x = block(x)
      skips.append(x)
    y = skips.pop()
    for up, dec in zip(self.up, self.dec):
      skip = skips.pop()
      y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
      y = dec(torch.cat([up(y), skip], dim=1))
    return F.relu(self.out_norm(self.out(y)))


class PretrainModel(nn.Module):
  def __init__(self, cin: int, features: int = 64, proj_dim: int = 128):
    super().__init__()
    self.backbone = UNet(cin, features=features)
    self.head = nn.Sequential(nn.Conv2d(features, features, 1), nn.ReLU(),
                              nn.Conv2d(features, proj_dim, 1))

  def forward(self, x):
    return F.normalize(self.head(self.backbone(x)), dim=1, eps=1e-6)


def load_flax_params(model: PretrainModel, params) -> None:
  """Copies the JAX PretrainModel's params (backbone + projection head, a nested dict of
  arrays) into `model`, so the two can be checked to compute the same function."""
  def conv(module, p):
    module.weight.data = torch.as_tensor(np.array(p["kernel"])).permute(3, 2, 0, 1).contiguous()
    module.bias.data = torch.as_tensor(np.array(p["bias"]))

  def norm(module, p):
    module.weight.data = torch.as_tensor(np.array(p["scale"]))
    module.bias.data = torch.as_tensor(np.array(p["bias"]))

  def block(module, p):
    convs = [m for m in module if isinstance(m, nn.Conv2d)]
    norms = [m for m in module if isinstance(m, nn.GroupNorm)]
    for i, (c, g) in enumerate(zip(convs, norms)):
      conv(c, p[f"Conv_{i}"])
      norm(g, p[f"GroupNorm_{i}"])

  bb, unet = params["backbone"], model.backbone
  for i, module in enumerate(unet.enc):
    block(module, bb[f"enc{i}"])
  levels = list(reversed(range(len(unet.enc) - 1)))
  for i, up, dec in zip(levels, unet.up, unet.dec):
    conv(up, bb[f"up{i}"])
    block(dec, bb[f"dec{i}"])
  conv(unet.out, bb["out"])
  norm(unet.out_norm, bb["out_norm"])
  conv(model.head[0], params["head"]["Conv_0"])
  conv(model.head[2], params["head"]["Conv_1"])


def info_nce(z1, z2, num_anchors: int, temperature: float, generator):
  """z1, z2 [B, E, H, W] of the same ground pixels: symmetric InfoNCE over N anchors an
  image, every other anchor of the batch (either image) a negative."""
  b, e, h, w = z1.shape
  idx = torch.stack([torch.randperm(h * w, generator=generator)[:num_anchors]
                     for _ in range(b)])                                     # [B, N]
  take = lambda z: torch.gather(z.flatten(2), 2, idx[:, None, :].expand(b, e, -1))  # noqa: E731
  a1 = take(z1).transpose(1, 2).reshape(-1, e)                               # [K, E]
  a2 = take(z2).transpose(1, 2).reshape(-1, e)
  target = torch.arange(a1.shape[0])
  return 0.5 * (F.cross_entropy(a1 @ a2.T / temperature, target)
                + F.cross_entropy(a2 @ a1.T / temperature, target))


def make_step(model, opt, mean, std, args, generator):
  def step(image):
    """image uint16-valued float [B, C, H, W]: one optimiser step; returns the loss."""
    x = (image - mean) / std
    b = x.shape[0]
    gain = 1.0 + 0.1 * torch.randn(b, 1, 1, 1, generator=generator)
    offset = 0.1 * torch.randn(b, 1, 1, 1, generator=generator)
    v1 = x * gain + offset
    v2 = torch.flip(x, dims=(3,)) * gain.flip(0) + offset.flip(0)
    both = torch.cat([v1, v2], 0)
    if args.channels_last:
      both = both.contiguous(memory_format=torch.channels_last)
    z = model(both)
    z1, z2 = z[:b], torch.flip(z[b:], dims=(3,))                  # undo view 2's flip
    loss = info_nce(z1, z2, args.num_anchors, 0.1, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())
  return step


def run(args) -> dict:
  torch.set_num_threads(args.threads or os.cpu_count())
  torch.manual_seed(0)
  generator = torch.Generator().manual_seed(1)
  c = args.bands * args.dates
  model = PretrainModel(c)
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
  decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
  rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                           {"params": rest, "weight_decay": 0.0}], lr=1e-3)
  image = torch.randint(1, 4000, (args.per_device_batch, c, args.tile, args.tile),
                        generator=generator).float()
  mean, std = torch.full((1, c, 1, 1), 1000.0), torch.full((1, c, 1, 1), 500.0)
  step = make_step(model, opt, mean, std, args, generator)
  for _ in range(args.warmup):
    step(image)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step(image)
  dt = (time.perf_counter() - t0) / args.steps
  return {"framework": "torch " + torch.__version__, "channels_last": args.channels_last,
          "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
          "per_device_batch": args.per_device_batch,
          "tile": [args.dates, args.tile, args.tile, args.bands],
          "step_ms": round(dt * 1e3, 3), "tiles_per_s": round(args.per_device_batch / dt, 2),
          "loss": loss}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--per_device_batch", type=int, default=32)
  p.add_argument("--tile", type=int, default=64)
  p.add_argument("--bands", type=int, default=13)
  p.add_argument("--dates", type=int, default=1)
  p.add_argument("--num_anchors", type=int, default=64)
  p.add_argument("--steps", type=int, default=10, help="timed steps (>= 1)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 0)")
  p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every CPU")
  p.add_argument("--channels_last", action="store_true", help="NHWC memory format")
  p.add_argument("--json", action="store_true", help="print JSON")
  return p


def main():
  args = parser().parse_args()
  if args.steps < 1 or args.warmup < 0:
    raise SystemExit("--steps must be >= 1 and --warmup >= 0")
  r = run(args)
  if args.json:
    print(json.dumps(r))
  else:
    print(f"{r['framework']} ({'channels_last' if r['channels_last'] else 'NCHW'}, "
          f"{r['threads']} threads): {r['params']:,} params, {r['step_ms']:.1f} ms/step, "
          f"{r['tiles_per_s']:.1f} tiles/s")


if __name__ == "__main__":
  main()
