"""Unlabelled archives as published at scale, read as scenes without listing them by hand.

`archive` (an `s2_tiles` parameter) is a mapping {layout, root, levels} (empty layout: no
archive; the default, so that each key can be set from the command line) or the text
'layout:root'. Layouts:
- 'majortom_parquet': Major TOM Core shards (one row per grid cell, bands as GeoTIFF bytes);
  each row is a product and a scene of its own (T = 1): Core holds one date per cell.
- 'ssl4eo': SSL4EO-S12 `<root>/<level>/<location>/<date>/B1.tif ...`; each date folder a
  scene (T = 1), or with time_series each location a scene of its dates (T = the longest
  series, shorter ones padded with valid=False and date 0, as the data contract says).

`scenes()` yields one scene at a time, (scene id, acquisitions), and keeps its files open
only until the next one is asked for, so memory stays bounded by one product whatever the
archive's size.
"""

import collections
import os
from typing import Iterator, Sequence

from ee_jax.errors import ConfigError

LAYOUTS = ("majortom_parquet", "ssl4eo")
KEYS = ("layout", "root", "levels")


def parse(value, where: str) -> dict | None:
  """The `archive` parameter checked and normalised; None when it names no layout."""
  if not value:
    return None
  if isinstance(value, str):
    layout, sep, root = value.partition(":")
    if not sep:
      raise ConfigError(f"{where}: archive must be 'layout:root' or a mapping "
                        f"{{layout, root}}, got {value!r}")
    value = {"layout": layout.strip(), "root": root.strip()}
  value = dict(value)
  unknown = set(value) - set(KEYS)
  if unknown:
    raise ConfigError(f"{where}: unknown archive key(s) {sorted(unknown)}; known: {list(KEYS)}")
  layout = value.get("layout")
  if not layout and not value.get("root"):
    return None
  if layout not in LAYOUTS:
    raise ConfigError(f"{where}: archive.layout must be one of {list(LAYOUTS)}, got {layout!r}")
  if not value.get("root"):
    raise ConfigError(f"{where}: archive.root is empty: give the archive's folder")
  value["root"] = os.path.expanduser(os.fspath(value["root"]))
  levels = value.get("levels") or ()
  value["levels"] = [levels] if isinstance(levels, str) else list(levels)
  if layout != "ssl4eo" and value["levels"]:
    raise ConfigError(f"{where}: archive.levels is for layout 'ssl4eo' only")
  return value


def num_dates(archive: dict, time_series: bool) -> int:
  """T of every example the archive gives."""
  if archive["layout"] == "ssl4eo" and time_series:
    from ee_jax.geo.archives import ssl4eo  # pylint: disable=import-outside-toplevel
    return ssl4eo.longest_series(archive["root"], archive["levels"])
  return 1


def units(archive: dict) -> list:
  """The archive's work units for a distributed build, each small and picklable: a Major
  TOM row group (shard, group, first row) or an SSL4EO location (id, folder, dates)."""
  # pylint: disable=import-outside-toplevel
  if archive["layout"] == "majortom_parquet":
    from ee_jax.geo.archives import majortom
    return majortom.row_groups(archive["root"])
  from ee_jax.geo.archives import ssl4eo
  return ssl4eo.locations(archive["root"], archive["levels"])


def unit_scenes(archive: dict, unit, band_names: Sequence[str], *, time_series: bool,
                remove_offset, nodata) -> Iterator:
  """(scene id, acquisitions) of one unit of `units`, one scene at a time."""
  # pylint: disable=import-outside-toplevel
  if archive["layout"] == "majortom_parquet":
    from ee_jax.geo.archives import majortom
    return majortom.group_scenes(*unit, band_names, remove_offset=remove_offset,
                                 nodata=nodata)
  from ee_jax.geo.archives import ssl4eo
  return ssl4eo.location_scenes(unit, band_names, time_series=time_series,
                                remove_offset=remove_offset, nodata=nodata)


def scenes(archive: dict, band_names: Sequence[str], *, time_series: bool,
           remove_offset, nodata) -> Iterator:
  """(scene id, acquisitions), one scene at a time (valid until the next is asked for), in
  the order of `units` (a Beam build's units give the same scenes)."""
  # pylint: disable=import-outside-toplevel
  if archive["layout"] == "majortom_parquet":
    from ee_jax.geo.archives import majortom
    return majortom.scenes(archive["root"], band_names, remove_offset=remove_offset,
                           nodata=nodata)
  from ee_jax.geo.archives import ssl4eo
  return ssl4eo.scenes(archive["root"], band_names, levels=archive["levels"],
                       time_series=time_series, remove_offset=remove_offset, nodata=nodata)


class Summary:
  """What the metadata records of an archive build: counts, not one entry per product
  (Major TOM Core has 2.2 M rows; a per-product list would grow the dataset's metadata and
  every checkpoint's copy of it, and the builder's memory, with the archive)."""

  def __init__(self):
    self.products = self.scenes = 0
    self.dates = []                          # [first, last] known date
    self.offsets = collections.Counter()     # DN offset removed -> products
    self.crs = collections.Counter()         # scene CRS -> scenes

  def add(self, scene) -> None:
    self.scenes += 1
    self.crs[scene.grid.crs.to_string()] += 1
    for acq in scene.acquisitions:
      self.products += 1
      self.offsets[str(acq.offset)] += 1
      if acq.date:
        self.dates = [min(self.dates[0], acq.date), max(self.dates[1], acq.date)] \
            if self.dates else [acq.date, acq.date]

  def merge(self, other: "Summary") -> "Summary":
    """Adds another worker's counts (a distributed build); returns self."""
    self.products += other.products
    self.scenes += other.scenes
    self.offsets.update(other.offsets)
    self.crs.update(other.crs)
    if other.dates:
      self.dates = [min(self.dates[0], other.dates[0]), max(self.dates[1], other.dates[1])] \
          if self.dates else list(other.dates)
    return self

  def as_metadata(self, archive: dict) -> dict:
    return {**archive, "products": self.products, "scenes": self.scenes,
            "first_and_last_date": list(self.dates), "offsets_removed": dict(self.offsets),
            "scene_crs": dict(self.crs)}


def describe(archive: dict) -> str:
  return f"{archive['layout']} archive {archive['root']}"
