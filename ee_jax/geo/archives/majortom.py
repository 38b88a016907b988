"""Major TOM Core as published: Parquet shards with one row per grid cell.

Layout (Major-TOM/Core-S2L1C and Core-S2L2A, `images/part_NNNNN.parquet`): columns
`product_id`, `grid_cell`, `product_datetime` (some releases `timestamp`), `thumbnail`
(PNG), one binary column per band (`B01` ... `B12`, `B8A`; `B10` in L1C only) holding a
single-band GeoTIFF at the band's native resolution, and `cloud_mask` (a 10 m GeoTIFF,
nonzero = cloud). Shards are written one row per row group; they are read row group by row
group and only the columns needed, so memory holds one row's GeoTIFFs at a time. Each
row's GeoTIFFs live in GDAL's memory file system (rasterio MemoryFile) while its tiles are
read, named after the shard, the row and the column so that a later read error (bytes that
open but do not decode) names them too.
"""

import contextlib
import datetime
import glob
import os
import re
import uuid
from typing import Iterator, Sequence

import rasterio
from rasterio.io import MemoryFile

from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import bands as bandlib
from ee_jax.geo import products as productlib

DATE_COLUMNS = ("timestamp", "product_datetime")
CLOUD_MASK = "cloud_mask"
INDEX_NAMES = ("metadata.parquet",)   # the archive's index of rows, not a shard


def _pyarrow_parquet():
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("reading Major TOM Parquet shards needs pyarrow: "
                      "pip install pyarrow") from None
  return pq


def shard_paths(root: str) -> list[str]:
  """The shards: `root` itself (a file or a glob pattern), or the *.parquet files of the
  folder or of its `images/` subfolder (the published tree), its metadata.parquet left out."""
  if set("*?[") & set(root):
    found = sorted(glob.glob(root))
  elif os.path.isfile(root):
    found = [root]
  elif os.path.isdir(root):
    found = sorted(glob.glob(os.path.join(root, "*.parquet")))
    found = [f for f in found if os.path.basename(f) not in INDEX_NAMES]
    if not found and os.path.isdir(os.path.join(root, "images")):
      found = sorted(glob.glob(os.path.join(root, "images", "*.parquet")))
  else:
    raise DataError(f"{root}: Major TOM shard folder not found")
  if not found:
    raise DataError(f"{root}: no Parquet shards (*.parquet) found")
  return found


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _date(values: dict, product_id: str, where: str) -> int:
  """YYYYMMDD from the date column (text such as '20200101T104421' or '2020-01-01 ...', or
  a timestamp), else from the product id."""
  for column in DATE_COLUMNS:
    value = values.get(column)
    if isinstance(value, (datetime.date, datetime.datetime)):
      return int(value.strftime("%Y%m%d"))
    if value:
      m = re.match(r"\s*(\d{4})-?(\d{2})-?(\d{2})", str(value))
      if not m:
        raise DataError(f"{where}: {column} {value!r} is not a date")
      return int("".join(m.groups()))
  return bandlib.sensing_date(product_id)


def _memory_raster(stack, data, shard: str, row: int, column: str) -> str:
  """The GeoTIFF bytes of one cell as a file checked to open, its path
  `/vsimem/<unique>/<shard path>/row<N>/<column>.tif`: a later read error names them."""
  if not data:
    raise DataError(f"{shard}: row {row}: column {column} is empty")
  where = os.path.abspath(shard).lstrip("/")
  mem = stack.enter_context(MemoryFile(data, dirname=f"{uuid.uuid4().hex}/{where}/row{row}",
                                       filename=column))
  try:
    with mem.open() as ds:
      if ds.count < 1 or ds.crs is None:
        raise DataError(f"{shard}: row {row}: column {column} is a raster without a band "
                        f"or without a CRS")
  except rasterio.errors.RasterioError as e:
    raise DataError(f"{shard}: row {row}: column {column} is not a readable GeoTIFF "
                    f"({_first_line(e)})") from None
  return mem.name


@contextlib.contextmanager
def row_acquisition(shard: str, row: int, values: dict, band_names: Sequence[str],
                    columns: dict, *, remove_offset="auto", nodata=None):
  """One row as an Acquisition whose files exist while the context is open."""
  product = str(values.get("product_id") or "")
  cell = str(values.get("grid_cell") or "")
  product_id = "_".join(x for x in (cell, product) if x) or \
      f"{os.path.splitext(os.path.basename(shard))[0]}_row{row}"
  with contextlib.ExitStack() as stack:
    files = {b: productlib.BandSource(_memory_raster(stack, values[columns[b]], shard, row,
                                                     columns[b]))
             for b in band_names}
    mask = values.get(CLOUD_MASK)
    yield productlib.Acquisition(
        product_id=product_id, date=_date(values, product, f"{shard}: row {row}"),
        bands=files, offset=productlib.resolve_offset(product or product_id, remove_offset),
        cloud_mask=_memory_raster(stack, mask, shard, row, CLOUD_MASK) if mask else None,
        nodata=nodata)


def _band_columns(shard: str, names: Sequence[str], band_names: Sequence[str]) -> dict:
  """Requested band -> its column ('B02', or 'B2'/'b02' spelt otherwise); one line for a
  band the shard lacks."""
  by_band = {bandlib.normalise_band_name(n): n for n in names}
  missing = [b for b in band_names if b not in by_band]
  if missing:
    found = sorted(b for b in by_band if b in bandlib.S2_NATIVE_GSD)
    raise DataError(f"{shard}: no column for band(s) {missing} (band columns: {found}); "
                    f"missing bands are never zero-filled")
  return {b: by_band[b] for b in band_names}


def _open(shard: str):
  try:
    return _pyarrow_parquet().ParquetFile(shard)
  except Exception as e:  # pylint: disable=broad-except  (pyarrow's errors vary by cause)
    raise DataError(f"{shard}: cannot read as Parquet ({_first_line(e)})") from None


def row_groups(root: str) -> list[tuple[str, int, int]]:
  """(shard, row group, its first row) for every row group: the work units of a
  distributed build (the published shards hold one row per group). Reads footers only."""
  units = []
  for shard in shard_paths(root):
    pf = _open(shard)
    with contextlib.closing(pf):
      first = 0
      for group in range(pf.num_row_groups):
        units.append((shard, group, first))
        first += pf.metadata.row_group(group).num_rows
  return units


def group_scenes(shard: str, group: int, first_row: int, band_names: Sequence[str], *,
                 remove_offset="auto", nodata=None) -> Iterator:
  """(scene id, [acquisition]) per row of one row group (a distributed build's unit)."""
  pf = _open(shard)
  with contextlib.closing(pf):
    yield from _rows(pf, shard, group, first_row, band_names, remove_offset=remove_offset,
                     nodata=nodata)


def _rows(pf, shard: str, group: int, first_row: int, band_names: Sequence[str], *,
          remove_offset, nodata) -> Iterator:
  """The rows of row group `group` of the open shard `pf`."""
  nodata = productlib.parse_nodata(nodata)
  names = pf.schema_arrow.names
  columns = _band_columns(shard, names, band_names)
  wanted = list(columns.values()) + [c for c in ("product_id", "grid_cell", CLOUD_MASK,
                                                  *DATE_COLUMNS) if c in names]
  try:
    table = pf.read_row_group(group, columns=wanted)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{shard}: row group {group} cannot be read ({_first_line(e)})") from None
  for j in range(table.num_rows):
    values = {c: table.column(c)[j].as_py() for c in wanted}
    with row_acquisition(shard, first_row + j, values, band_names, columns,
                         remove_offset=remove_offset, nodata=nodata) as acq:
      yield acq.product_id, [acq]


def scenes(root: str, band_names: Sequence[str], *, remove_offset="auto",
           nodata=None) -> Iterator:
  """(scene id, [acquisition]) per row, shard by shard and row group by row group; each
  shard opened once (a published shard holds hundreds of one-row groups)."""
  for shard in shard_paths(root):
    pf = _open(shard)
    with contextlib.closing(pf):
      first = 0
      for group in range(pf.num_row_groups):
        yield from _rows(pf, shard, group, first, band_names, remove_offset=remove_offset,
                         nodata=nodata)
        first += pf.metadata.row_group(group).num_rows
