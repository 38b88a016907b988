"""Embeddings at points, as a table for classical tools (`--mode=embed --points=FILE`).

Why: a probe with scikit-learn or LightGBM on labelled points needs a table (coordinates,
label, embedding columns), not a GeoTIFF to sample. The points file is a CSV with a header:
`x,y` in the scene's CRS or `lon,lat` in degrees (WGS84), any other columns (e.g. `label`)
carried over unchanged. Points are checked against the scene before the pass, and their
embeddings are taken from the same blended rows the embedding GeoTIFF is written from
(float32; NaN where the pixel is not observed), into `<out stem>_points.csv` (or `.parquet`
with `config.inference.points_format='parquet'`), staged and committed with the other
outputs.
"""

import csv
import math
import os

import numpy as np

from ee_jax.errors import ConfigError, DataError
from ee_jax.geo.reader import Grid
from ee_jax.inference.writers import Staged, hidden_path

COORDINATES = (("x", "y"), ("lon", "lat"))


class Points:
  """The points of a file on a scene's grid: its columns, and each point's (row, col)."""

  def __init__(self, path: str, grid: Grid, scene_id: str = "", features: int = 0):
    self.path = path
    if not os.path.isfile(path):
      raise DataError(f"--points: no file '{path}' (a CSV with columns x,y or lon,lat)")
    with open(path, newline="", encoding="utf-8-sig") as f:
      lines = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r]  # blank lines: none
    self.columns = [c.strip() for c in lines[0][1]] if lines else []
    for n, r in lines[1:]:
      if len(r) != len(self.columns):
        raise DataError(f"{path}, line {n}: {len(r)} values for the {len(self.columns)} "
                        f"columns {self.columns}")
    self.lines = [n for n, _ in lines[1:]]
    rows = [[v.strip() for v in r] for _, r in lines[1:]]
    names = next((pair for pair in COORDINATES if set(pair) <= set(self.columns)), None)
    if names is None:
      raise DataError(f"{path}: needs columns x,y (in the scene's CRS) or lon,lat (degrees); "
                      f"has {self.columns}")
    taken = [c for c in self.columns if c in embedding_columns(features)]
    if taken:
      raise DataError(f"{path}: columns {taken} clash with the embedding columns e0..e"
                      f"{features - 1}; rename them")
    if not rows:
      raise DataError(f"{path}: holds no points")
    self.values = rows
    xy = np.array([[self._number(i, names[0]), self._number(i, names[1])]
                   for i in range(len(rows))])
    if names == ("lon", "lat"):
      if grid.crs is None:
        raise DataError(f"{path}: lon,lat given but the scene has no CRS; give x,y in pixels "
                        f"of its own grid")
      import rasterio.warp  # pylint: disable=import-outside-toplevel
      xs, ys = rasterio.warp.transform("EPSG:4326", grid.crs, xy[:, 0], xy[:, 1])
      xy = np.stack([xs, ys], axis=1)
    cols, rows_ = (~grid.transform) * (xy[:, 0], xy[:, 1])
    self.row = np.floor(np.asarray(rows_)).astype(np.int64)
    self.col = np.floor(np.asarray(cols)).astype(np.int64)
    outside = np.flatnonzero((self.row < 0) | (self.row >= grid.height) |
                             (self.col < 0) | (self.col >= grid.width))
    if len(outside):
      i = int(outside[0])
      left, bottom, right, top = grid.bounds
      given = ", ".join(f"{n}={rows[i][self.columns.index(n)]}" for n in names)
      raise DataError(
          f"{path}, line {self.lines[i]}: point ({given}) lies outside the scene {scene_id} "
          f"(x {left:.10g} to {right:.10g}, y {bottom:.10g} to {top:.10g} in "
          f"{grid.crs.to_string() if grid.crs else 'pixels'}); {len(outside)} of "
          f"{len(rows)} points are outside")
    self.embedding = np.full((len(rows), features), np.nan, np.float32)

  def _number(self, i: int, name: str) -> float:
    text = self.values[i][self.columns.index(name)]
    try:
      value = float(text)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise DataError(f"{self.path}, line {self.lines[i]}: {name}='{text}' is not a number")
    return value

  def take(self, first: int, feats: np.ndarray) -> None:
    """Records the points in scene rows first .. first + len(feats) - 1 (feats [n, W, D])."""
    hit = (self.row >= first) & (self.row < first + len(feats))
    self.embedding[hit] = feats[self.row[hit] - first, self.col[hit]]


def embedding_columns(d: int) -> list[str]:
  return [f"e{i}" for i in range(d)]


class TableSink(Staged):
  """The points' table under a hidden name until `commit()`, like the rasters."""

  def __init__(self, path: str, points: Points, fmt: str):
    self.path, self.points, self.fmt = path, points, fmt   # 'csv' | 'parquet' (Options)
    self._register(path)
    self.staged = hidden_path(path, fmt)

  def finish(self) -> None:
    p = self.points
    header = p.columns + embedding_columns(p.embedding.shape[1])
    if self.fmt == "csv":
      with open(self.staged, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        for values, emb in zip(p.values, p.embedding):
          out.writerow(values + [str(v) for v in emb])   # float32's shortest exact text
      return
    try:
      import pyarrow  # pylint: disable=import-outside-toplevel
      import pyarrow.parquet  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError("config.inference.points_format='parquet' needs pyarrow; "
                        "pip install pyarrow, or use 'csv'") from None
    data = {c: _column([v[j] for v in p.values]) for j, c in enumerate(p.columns)}
    data.update({c: p.embedding[:, j] for j, c in enumerate(header[len(p.columns):])})
    pyarrow.parquet.write_table(pyarrow.table(data), self.staged)

  def commit(self) -> None:
    os.replace(self.staged, self.path)
    self._done()

  def abort(self) -> None:
    self._done()


def _column(texts: list[str]):
  """Numbers where every value of the column is one (float64), else the texts."""
  try:
    return np.array([float(t) for t in texts])
  except ValueError:
    return texts
