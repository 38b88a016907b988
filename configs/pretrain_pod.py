"""Pre-training on a whole archive as published, on a TPU pod slice or a multi-GPU node.

  python launch.py --distributed --mode=pretrain --config=configs/pretrain_pod.py:devices=16 \\
    --config.data.builder.archive.root=/mnt/shared/Core-S2L2A \\
    --config.data.data_dir=/mnt/shared/tfds --workdir=/mnt/shared/runs/pod

Arguments (comma-separated, any order): `devices=N` (the run's accelerator count, default 8:
one 8-GPU node; a v4-32 slice has 16 chips, a v5e-32 32), `ssl4eo` (an SSL4EO-S12 root's L2A
level instead of Major TOM Core-S2L2A Parquet shards), `smoke` (tiny model, tiles and
batch, a few steps: the test's fixture). The archive's root is
`--config.data.builder.archive.root`.

The global batch is fixed here (GLOBAL_BATCH) and the per-device batch derived from it
(GLOBAL_BATCH / devices), so the learning rate, which the code uses as given, belongs to
one global batch whatever the slice: docs/scaling.md's way 1. The rate follows that page's
square-root rule from the one-host reference (pretrain_s2: 32 tiles a step, 1e-3):
REFERENCE_LR * sqrt(GLOBAL_BATCH / REFERENCE_BATCH). Warmup and checkpoints are counted
in examples and turned into steps; `train.steps` is EPOCHS passes over the archive's
train tiles as published (the code counts steps, not epochs). Pre-training checks at
start that jax.device_count() gives this global batch (`pod` section) and stops with one
line if not.

Model and objective are pretrain_s2's (default UNet, masked reconstruction,
defaults.masked_objective) on 64 px tiles of the 12 L2A bands, in bfloat16.
Produced: not run at scale; figures, commands and the cost of one pass over Major TOM Core
in docs/scaling.md ("Pre-training on an archive at pod scale").
"""

import math

from configs import pretrain_s2
from ee_jax.geo.bands import S2_L2A_BANDS

GLOBAL_BATCH = 1024         # tiles per optimizer step over all devices
REFERENCE_BATCH = 32        # pretrain_s2's global batch on one device ...
REFERENCE_LR = 1e-3         # ... and its peak learning rate
DEFAULT_DEVICES = 8         # one 8-GPU node (docs/scaling.md's H200 row at 128 per device)
EPOCHS = 1
WARMUP_EXAMPLES = 2_000_000
CHECKPOINT_EXAMPLES = 10_000_000   # 2-4 min apart on 8 H200 / a v4-32 (docs/scaling.md)
TILE = 64
# Reader threads per host: about 4 host cores keep one H200 fed at 128 bf16 tiles a step
# (docs/scaling.md), x 8 GPUs on a node; more than a TPU v4 host's 4 chips need.
READ_THREADS = 32
SPLITS = {"train": 0.99, "validation": 0.01}

# Archives as published (docs/scaling.md cites the sources): cells or patches, their
# 10 m pixels a side, and how many of them the layout reads.
ARCHIVES = {
    # Major TOM Core-S2L2A (its dataset card): 2,245,886 patches of 1,068 x 1,068 px, 10 m.
    "majortom_parquet": dict(images=2_245_886, pixels=1068, levels=()),
    # SSL4EO-S12 L2A: 251,079 locations x 4 seasons, 264 x 264 px.
    "ssl4eo": dict(images=251_079 * 4, pixels=264, levels=("s2a",)),
}
SMOKE = dict(global_batch=8, tile=32, images=4, pixels=64)
PATH = "configs/pretrain_pod.py"


def parse(arg: str | None) -> dict:
  """`:arg` -> {devices, layout, smoke}; anything else is one line naming it."""
  out = dict(devices=DEFAULT_DEVICES, layout="majortom_parquet", smoke=False)
  for part in [p.strip() for p in (arg or "").split(",") if p.strip()]:
    if part == "smoke":
      out["smoke"] = True
    elif part == "ssl4eo":
      out["layout"] = "ssl4eo"
    elif part.startswith("devices=") and part[8:].isdigit() and int(part[8:]) > 0:
      out["devices"] = int(part[8:])
    else:
      raise ValueError(f"{PATH}: unknown argument '{arg}' (known: smoke, ssl4eo, devices=N, "
                       f"comma-separated)")
  return out


def scaled_lr(global_batch: int) -> float:
  """docs/scaling.md's square-root rule from the one-host reference."""
  return REFERENCE_LR * math.sqrt(global_batch / REFERENCE_BATCH)


def train_tiles(images: int, pixels: int, tile: int) -> int:
  """Train tiles of an archive: non-overlapping tiles per image x images x train share
  (an upper bound: tiles with over max_invalid clouds or no-data are dropped)."""
  return int(images * (pixels // tile) ** 2 * SPLITS["train"])


def get_config(arg: str | None = None):
  a = parse(arg)
  c = pretrain_s2.get_config("smoke" if a["smoke"] else None)
  g, tile = (SMOKE["global_batch"], SMOKE["tile"]) if a["smoke"] else (GLOBAL_BATCH, TILE)
  if g % a["devices"]:
    raise ValueError(f"{PATH}: devices={a['devices']} does not divide the global batch {g}")
  archive = ARCHIVES[a["layout"]]
  images, pixels = ((SMOKE["images"], SMOKE["pixels"]) if a["smoke"] else
                    (archive["images"], archive["pixels"]))

  c.data.config_name = f"pod_{a['layout']}{'_smoke' if a['smoke'] else ''}"
  c.data.builder.update(dict(source="manual", bands=tuple(S2_L2A_BANDS), tile_size=tile,
                             stride=tile, split_fractions=dict(SPLITS)))
  c.data.builder.archive.update(dict(layout=a["layout"], root="",
                                     levels=archive["levels"]))
  c.data.per_device_batch = g // a["devices"]
  c.data.read_threads = READ_THREADS

  steps_per_epoch = train_tiles(images, pixels, tile) // g
  c.train.steps = max(2, EPOCHS * steps_per_epoch)
  c.optim.learning_rate = scaled_lr(g)
  c.optim.warmup_steps = max(1, WARMUP_EXAMPLES // g)
  c.train.checkpoint_every = max(1, CHECKPOINT_EXAMPLES // g)
  c.train.keep_checkpoints = 3
  c.train.log_every = 100
  c.train.eval_every = 10 * c.train.checkpoint_every
  c.train.eval_batches = 20
  c.model.dtype = "bfloat16"
  # What the numbers above came from (config.json keeps it; pretrain checks the batch).
  c.pod = dict(global_batch=g, devices=a["devices"], reference_batch=REFERENCE_BATCH,
               reference_lr=REFERENCE_LR, lr_rule="sqrt", epochs=EPOCHS,
               archive_images=images, image_pixels=pixels)
  if a["smoke"]:  # a couple of steps on CPU: float32, every step logged, one checkpoint
    c.model.dtype = "float32"
    c.data.read_threads = 2
    c.augment.crop_size = 24
    c.train.steps = 2
    c.optim.warmup_steps = 1
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    c.data.builder.split_fractions = {"train": 0.5, "validation": 0.5}  # 4 tiles, both splits
    c.data.builder.block_tiles = 1
  return c
