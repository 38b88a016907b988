"""Cutting a scene into tiles, block by block, for one spatial split at a time.

Tiles are grouped into square blocks of `block_tiles x block_tiles` tile positions; each
block belongs to one split (`ee_jax.data.splits.assign_blocks`). With a stride smaller than
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


def block_grid(height: int, width: int, tile_size: int, stride: int,
               block_tiles: int) -> list[tuple[int, int]]:
  """The (block_row, block_col) of every block that holds at least one tile origin."""
  block_px = block_tiles * stride
  rows, cols = tile_origins(height, tile_size, stride), tile_origins(width, tile_size, stride)
  if not rows or not cols:
    return []
  return [(br, bc) for br in range(rows[-1] // block_px + 1)
          for bc in range(cols[-1] // block_px + 1)]


def iter_split_tiles(height: int, width: int, *, tile_size: int, stride: int,
                     block_tiles: int, split_of_block: Callable[[int, int], str | None],
                     split: str, read_window: Callable[[Window], dict]
                     ) -> Iterator[tuple[int, int, dict]]:
  """Yields (row, col, arrays) for every tile of `split`, reading one window per block.

  `read_window(window)` returns {key: (array, row_axis)}, the array's axes row_axis and
  row_axis + 1 being the window's rows and columns. `split_of_block` gives None for a
  block that holds no tile origin (a footprint may reach into it without leaking).
  """
  block_px = block_tiles * stride
  rows, cols = tile_origins(height, tile_size, stride), tile_origins(width, tile_size, stride)

  def inside_split(r, c):
    blocks = [(i, j) for i in range(r // block_px, (r + tile_size - 1) // block_px + 1)
              for j in range(c // block_px, (c + tile_size - 1) // block_px + 1)]
    return all(split_of_block(i, j) in (split, None) for i, j in blocks)

  for br, bc in block_grid(height, width, tile_size, stride, block_tiles):
    if split_of_block(br, bc) != split:
      continue
    kept = [(r, c) for r in rows if r // block_px == br for c in cols
            if c // block_px == bc and inside_split(r, c)]
    if not kept:
      continue
    r0, c0 = min(r for r, _ in kept), min(c for _, c in kept)
    r1, c1 = max(r for r, _ in kept) + tile_size, max(c for _, c in kept) + tile_size
    arrays = read_window(Window(c0, r0, c1 - c0, r1 - r0))
    for r, c in kept:
      yield r, c, {k: _crop(a, axis, r - r0, c - c0, tile_size)
                   for k, (a, axis) in arrays.items()}


def _crop(array: np.ndarray, row_axis: int, r: int, c: int, size: int) -> np.ndarray:
  index = [slice(None)] * array.ndim
  index[row_axis] = slice(r, r + size)
  index[row_axis + 1] = slice(c, c + size)
  return np.ascontiguousarray(array[tuple(index)])
