"""Spatial splits: whole blocks of tiles go to one split, so neighbours never leak."""

import hashlib
from typing import Mapping


def block_split(scene_id: str, block_row: int, block_col: int,
                fractions: Mapping[str, float], seed: int) -> str:
  """Assigns a block to a split by a stable hash of (seed, scene, block position).

  `fractions` maps split name -> share (they need not sum to 1; they are normalised).
  The hash is independent of Python's per-process hash salt, so every process and every
  rebuild agrees.
  """
  key = f"{seed}:{scene_id}:{block_row}:{block_col}".encode()
  u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
  total = sum(fractions.values())
  acc = 0.0
  names = list(fractions)
  for name in names:
    acc += fractions[name] / total
    if u < acc:
      return name
  return names[-1]
