"""Spatial splits: whole blocks of tiles go to one split, so neighbours never leak."""

import hashlib
from typing import Hashable, Mapping, Sequence


def block_hash(seed: int, scene_id: str, block: Hashable) -> float:
  """A stable uniform number in [0, 1) per block (independent of Python's hash salt)."""
  key = f"{seed}:{scene_id}:{block}".encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


def assign_blocks(scene_id: str, blocks: Sequence[Hashable], fractions: Mapping[str, float],
                  seed: int) -> dict:
  """Block -> split name, with split sizes as close to `fractions` as whole blocks allow.

  Blocks are ranked by a seeded hash and dealt out in that order, so the assignment is
  random-looking but reproducible on every process and rebuild. Every split with a
  non-zero share gets at least one block when there are enough blocks.
  """
  names = [n for n, f in fractions.items() if f > 0]
  total = sum(fractions[n] for n in names)
  n = len(blocks)
  exact = [fractions[name] / total * n for name in names]
  counts = [int(e) for e in exact]
  # Largest remainders first, then make sure no split is left empty if it can be helped.
  for i in sorted(range(len(names)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
    counts[i] += 1
  for i in range(len(names)):
    if counts[i] == 0 and n >= len(names):
      donor = max(range(len(names)), key=lambda j: counts[j])
      counts[donor] -= 1
      counts[i] += 1
  ranked = sorted(blocks, key=lambda b: block_hash(seed, scene_id, b))
  assignment, start = {}, 0
  for name, count in zip(names, counts):
    for block in ranked[start:start + count]:
      assignment[block] = name
    start += count
  return assignment
