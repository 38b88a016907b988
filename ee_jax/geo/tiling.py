"""Cutting a scene into tiles, block by block, for one spatial split at a time.

Tiles are grouped into square blocks of `block_tiles x block_tiles` tile positions; each
block belongs to one split (`ee_jax.data.splits.block_split`). With a stride smaller than
the tile size, a tile whose footprint reaches into a block of another split is dropped, so
no pixel is shared between splits. Each block is read as one window (bounded memory) and
blocks are visited in raster order, which suits GDAL's block cache.
"""

from typing import Callable, Iterator

import numpy as np
from rasterio.windows import Window


def tile_origins(length: int, tile_size: int, stride: int) -> list[int]:
  """Top-left offsets of the full tiles along one axis (a partial last tile is skipped)."""
  if length < tile_size:
    return []
  return list(range(0, length - tile_size + 1, stride))


def iter_split_tiles(height: int, width: int, *, tile_size: int, stride: int,
                     block_tiles: int, split_of_block: Callable[[int, int], str], split: str,
                     read_window: Callable[[Window], dict]
                     ) -> Iterator[tuple[int, int, dict]]:
  """Yields (row, col, arrays) for every tile of `split`.

  `read_window(window)` returns a dict of arrays whose last-but-one spatial axes are
  (rows, cols) for 3-D+ arrays laid out [..., h, w] or [..., h, w, C]: each value is given
  as (array, row_axis). Only blocks of `split` are read.
  """
  block_px = block_tiles * stride
  rows, cols = tile_origins(height, tile_size, stride), tile_origins(width, tile_size, stride)
  if not rows or not cols:
    return
  n_block_rows = (rows[-1] // block_px) + 1
  n_block_cols = (cols[-1] // block_px) + 1
  split_cache = {}

  def split_at(br, bc):
    if (br, bc) not in split_cache:
      split_cache[(br, bc)] = split_of_block(br, bc)
    return split_cache[(br, bc)]

  for br in range(n_block_rows):
    for bc in range(n_block_cols):
      if split_at(br, bc) != split:
        continue
      block_rows = [r for r in rows if r // block_px == br]
      block_cols = [c for c in cols if c // block_px == bc]
      kept = []
      for r in block_rows:
        for c in block_cols:
          last_br, last_bc = (r + tile_size - 1) // block_px, (c + tile_size - 1) // block_px
          if all(split_at(i, j) == split for i in range(br, last_br + 1)
                 for j in range(bc, last_bc + 1)):
            kept.append((r, c))
      if not kept:
        continue
      r0, c0 = min(r for r, _ in kept), min(c for _, c in kept)
      r1 = max(r for r, _ in kept) + tile_size
      c1 = max(c for _, c in kept) + tile_size
      arrays = read_window(Window(c0, r0, c1 - c0, r1 - r0))
      for r, c in kept:
        yield r, c, {k: _crop(a, axis, r - r0, c - c0, tile_size)
                     for k, (a, axis) in arrays.items()}


def _crop(array: np.ndarray, row_axis: int, r: int, c: int, size: int) -> np.ndarray:
  index = [slice(None)] * array.ndim
  index[row_axis] = slice(r, r + size)
  index[row_axis + 1] = slice(c, c + size)
  return np.ascontiguousarray(array[tuple(index)])
