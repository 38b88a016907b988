"""SSL4EO-S12 as published: `<root>/<level>/<location>/<date folder>/B1.tif ... B12.tif`.

Levels are `s2c` (L1C, 13 bands) and `s2a` (L2A, no B10); `s1` (SAR) is not read. `root` is
the archive root (holding level folders; `levels` picks among them) or one level folder.
Each date folder is a product folder read by ee_jax.geo.products, so band checks and
errors are those of any product folder. Ids are `<level>_<location>_<date folder>` for a
date and `<level>_<location>` for a location's series, so L1C and L2A never collide.
"""

import os
from typing import Iterator, Sequence

from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import bands as bandlib
from ee_jax.geo import products as productlib

S2_LEVELS = ("s2a", "s2c")   # L2A, L1C
ARCHIVE_CHILDREN = S2_LEVELS + ("s1",)


def _subfolders(path: str) -> list[str]:
  return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))
                and not n.startswith("."))


def level_folders(root: str, levels: Sequence[str] = ()) -> list[tuple[str, str]]:
  """(level, folder) pairs to read: the chosen levels of an archive root, or `root` itself."""
  if not os.path.isdir(root):
    raise DataError(f"{root}: SSL4EO archive root not found")
  children = _subfolders(root)
  if not set(children) & set(ARCHIVE_CHILDREN):   # a level folder given directly
    name = os.path.basename(os.path.normpath(root))
    if levels and list(levels) != [name]:
      raise ConfigError(f"{root}: archive.levels {list(levels)} given, but this folder is "
                        f"one level ('{name}'), not an archive root holding {S2_LEVELS}")
    return [(name, root)]
  found = [c for c in children if c in S2_LEVELS]
  if not levels:
    if len(found) > 1:
      raise ConfigError(f"{root}: holds levels {found} (s2c = L1C, s2a = L2A): choose with "
                        f"archive.levels, e.g. ['s2c']")
    levels = found
  missing = [lv for lv in levels if lv not in found]
  if missing or not levels:
    raise DataError(f"{root}: no level folder(s) {missing or list(S2_LEVELS)} in this "
                    f"SSL4EO root (found {children})")
  return [(lv, os.path.join(root, lv)) for lv in levels]


def locations(root: str, levels: Sequence[str] = ()) -> list[tuple[str, str, list[str]]]:
  """(scene id, location folder, date folder names in order) for every location."""
  out = []
  for level, folder in level_folders(root, levels):
    for loc in _subfolders(folder):
      path = os.path.join(folder, loc)
      dates = _subfolders(path)
      if not dates:
        raise DataError(f"{path}: location without date folders (SSL4EO layout "
                        f"<level>/<location>/<date>/B1.tif ...)")
      out.append((f"{level}_{loc}", path, dates))
  if not out:
    raise DataError(f"{root}: no location folders in this SSL4EO archive")
  return out


def longest_series(root: str, levels: Sequence[str] = ()) -> int:
  return max(len(dates) for _, _, dates in locations(root, levels))


def location_scenes(location: tuple, band_names: Sequence[str], *, time_series: bool = False,
                    remove_offset="auto", nodata=None) -> Iterator:
  """(scene id, acquisitions) of one location (an entry of `locations`): the work unit of
  a distributed build."""
  scene_id, path, dates = location
  nodata = productlib.parse_nodata(nodata)
  acqs = [productlib.product_folder(
      os.path.join(path, d), band_names, date=bandlib.sensing_date(d),
      remove_offset=remove_offset, product_id=f"{scene_id}_{d}", nodata=nodata)
      for d in dates]
  if time_series:
    yield scene_id, acqs
  else:
    for acq in acqs:
      yield acq.product_id, [acq]


def scenes(root: str, band_names: Sequence[str], *, levels: Sequence[str] = (),
           time_series: bool = False, remove_offset="auto", nodata=None) -> Iterator:
  """(scene id, acquisitions): one per location (time_series) or per date folder."""
  for location in locations(root, levels):
    yield from location_scenes(location, band_names, time_series=time_series,
                               remove_offset=remove_offset, nodata=nodata)
