"""Finding the files of one acquisition: a product folder or a multi-band GeoTIFF.

An `Acquisition` says, for one date, which file (and which band of it) holds each
requested band, where its cloud mask is, and which DN offset to remove. Every check that
can be made without reading pixels is made here, with the product named in the error.
"""

import dataclasses
import glob
import os
import re
from typing import Mapping, Sequence

import rasterio

from ee_jax.errors import DataError
from ee_jax.geo import bands as bandlib
from ee_jax.geo import remote

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
CLOUD_MASK_NAMES = ("cloud_mask.tif", "cloud_mask.tiff")
# Scene classification (L2A SCL) classes that are not clear ground: no data, saturated,
# cloud shadow, cloud medium/high probability, thin cirrus.
SCL_INVALID = (0, 1, 3, 8, 9, 10)
_RES_HINT = re.compile(r"_(\d+)m(?:[_.]|$)")


@dataclasses.dataclass(frozen=True)
class BandSource:
  path: str
  index: int = 1  # 1-based band index inside the file


@dataclasses.dataclass(frozen=True)
class Acquisition:
  """One date of one footprint."""
  product_id: str
  date: int                                  # YYYYMMDD, 0 if unknown
  bands: Mapping[str, BandSource]            # requested band -> where it is
  offset: int = 0                            # DN offset to remove (baseline >= 04.00)
  cloud_mask: str | None = None              # nonzero = cloud (Major TOM style)
  scl: str | None = None                     # L2A scene classification
  nodata: float | None = None                # overrides the files' own nodata if set

  @property
  def files(self) -> list[str]:
    return sorted({b.path for b in self.bands.values()})


def _raster_files(folder: str) -> list[str]:
  found = []
  for root, _, names in os.walk(folder):
    found += [os.path.join(root, n) for n in names if n.lower().endswith(RASTER_SUFFIXES)]
  return sorted(found)


def _resolution_hint(path: str) -> int:
  m = _RES_HINT.search(os.path.basename(path))
  return int(m.group(1)) if m else 0


def _pick_band_file(product: str, band: str, candidates: list[str]) -> str:
  """One file per band; SAFE L2A folders hold a band at several resolutions: take the finest."""
  if len(candidates) == 1:
    return candidates[0]
  hinted = sorted(candidates, key=_resolution_hint)
  if _resolution_hint(hinted[0]) and _resolution_hint(hinted[0]) != _resolution_hint(hinted[1]):
    return hinted[0]
  raise DataError(f"{product}: several files hold band {band} and none is clearly the "
                  f"native one: {candidates}")


def resolve_offset(product_id: str, remove_offset) -> int:
  """remove_offset: 'auto' (from the processing baseline in the name), True/False, or a number.

  Strings ('true', 'false', '1000') are accepted too, as command-line overrides give them.
  """
  if isinstance(remove_offset, str) and remove_offset.lower() != "auto":
    text = remove_offset.strip().lower()
    remove_offset = {"true": True, "false": False, "": False}.get(text, text)
    if isinstance(remove_offset, str):
      try:
        remove_offset = int(remove_offset)
      except ValueError:
        raise DataError(f"{product_id}: remove_offset must be 'auto', true, false or a "
                        f"number, got '{text}'") from None
  if remove_offset == "auto":
    return bandlib.default_offset(product_id)
  if remove_offset is True:
    return bandlib.BASELINE_04_OFFSET
  if remove_offset is False or remove_offset is None:
    return 0
  return int(remove_offset)


def product_folder(path: str, band_names: Sequence[str], *, date: int | None = None,
                   remove_offset="auto", product_id: str | None = None,
                   nodata: float | None = None, cloud_mask: str | None = None) -> Acquisition:
  """A folder with one raster per band at native resolution (SAFE IMG_DATA, Major TOM, ...)."""
  if remote.is_remote(path):
    remote.check_not_listed(path.rstrip("/") + "/", "product")
  if not os.path.isdir(path):
    raise DataError(f"{path}: product folder not found")
  product_id = product_id or os.path.basename(os.path.normpath(path))
  by_band: dict[str, list[str]] = {}
  given_mask, cloud_mask, scl = _given_cloud_mask(path, cloud_mask), None, None
  for f in _raster_files(path):
    name = os.path.basename(f).lower()
    if name in CLOUD_MASK_NAMES or f == given_mask:
      cloud_mask = f
      continue
    if "scl" in re.split(r"[_\-.]", name):
      scl = scl or f
      continue
    band = bandlib.band_in_filename(f)
    if band:
      by_band.setdefault(band, []).append(f)
  missing = [b for b in band_names if b not in by_band]
  if missing:
    raise DataError(f"{path}: band file(s) {missing} not found in product {product_id} "
                    f"(found bands {sorted(by_band)}); missing bands are never zero-filled")
  chosen = {b: BandSource(_pick_band_file(path, b, by_band[b])) for b in band_names}
  return Acquisition(product_id=product_id,
                     date=bandlib.sensing_date(product_id) if date is None
                     else bandlib.parse_date(date, path),
                     bands=chosen, offset=resolve_offset(product_id, remove_offset),
                     cloud_mask=given_mask or cloud_mask, scl=scl, nodata=nodata)


def multiband_file(path: str, band_names: Sequence[str], *,
                   band_order: Sequence[str] | None = None, date: int | None = None,
                   remove_offset="auto", product_id: str | None = None,
                   nodata: float | None = None, cloud_mask: str | None = None) -> Acquisition:
  """One GeoTIFF holding several bands; their order is declared, or read from descriptions.
  A URL or /vsi… path is read in place (ee_jax/geo/remote.py)."""
  if remote.is_remote(path):
    remote.check_not_listed(path, "product")
    product_id = product_id or remote.stem(path)
    path = remote.check_raster(path, "image file")
  elif not os.path.isfile(path):
    raise DataError(f"{path}: image file not found")
  product_id = product_id or os.path.splitext(os.path.basename(path))[0]
  try:
    with rasterio.open(path) as ds:
      count, descriptions = ds.count, ds.descriptions
  except rasterio.errors.RasterioError as e:
    raise DataError(f"{path}: cannot open as a raster ({e})") from e
  if band_order:
    order = [bandlib.normalise_band_name(b) for b in band_order]
    if len(order) != count:
      raise DataError(f"{path}: band_order names {len(order)} bands but the file has {count}")
  elif all(descriptions):
    order = [bandlib.normalise_band_name(d) for d in descriptions]
    if not set(order) & set(bandlib.S2_NATIVE_GSD):
      raise DataError(f"{path}: its band descriptions ({descriptions[0]!r}, ...) are not "
                      f"band names; declare the bands' order with band_order")
  else:
    raise DataError(f"{path}: {count} bands without descriptions; declare their order "
                    f"with band_order")
  missing = [b for b in band_names if b not in order]
  if missing:
    raise DataError(f"{path}: band(s) {missing} not in this file (it holds {order}); "
                    f"missing bands are never zero-filled")
  chosen = {b: BandSource(path, order.index(b) + 1) for b in band_names}
  return Acquisition(product_id=product_id,
                     date=bandlib.sensing_date(product_id) if date is None
                     else bandlib.parse_date(date, path),
                     bands=chosen, offset=resolve_offset(product_id, remove_offset),
                     nodata=nodata, cloud_mask=_given_cloud_mask(path, cloud_mask))


def _given_cloud_mask(path: str, cloud_mask: str | None) -> str | None:
  """A product's `cloud_mask` option (a raster on its grid, nonzero = cloud), checked."""
  if not cloud_mask:
    return None
  cloud_mask = os.path.expanduser(os.fspath(cloud_mask))
  if remote.is_remote(cloud_mask):
    return remote.check_raster(cloud_mask, f"cloud_mask of {path}")
  if not os.path.isfile(cloud_mask):
    raise DataError(f"{path}: its cloud_mask {cloud_mask} not found")
  return cloud_mask


def parse_nodata(value) -> float | None:
  """'auto' / None: use each file's own nodata (0 where a file declares none); else a number."""
  if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise DataError(f"nodata must be 'auto' or a number, got {value!r}") from None


def acquisition(spec, band_names: Sequence[str], **defaults) -> Acquisition:
  """A folder or a file path, or a mapping {path, date, band_order, remove_offset,
  product_id, nodata, cloud_mask}."""
  if isinstance(spec, (str, os.PathLike)):
    spec = {"path": os.fspath(spec)}
  spec = dict(spec)
  path = os.path.expanduser(spec.pop("path"))
  options = {**defaults, **spec}
  options["nodata"] = parse_nodata(options.get("nodata"))
  unknown = set(options) - {"date", "remove_offset", "product_id", "nodata", "band_order",
                            "cloud_mask"}
  if unknown:
    raise DataError(f"{path}: unknown product option(s) {sorted(unknown)}")
  if not remote.is_remote(path) and os.path.isdir(path):
    options.pop("band_order", None)
    return product_folder(path, band_names, **options)
  return multiband_file(path, band_names, **options)


def expand_patterns(specs) -> list:
  """Product entries whose path is a glob pattern (`Hydro/patch_*.tif`, `bigearthnet/*/`)
  become one entry per match, in sorted order, each with the entry's other options; a
  pattern matching nothing is an error naming it."""
  expanded = []
  for spec in specs:
    entry = {"path": spec} if isinstance(spec, (str, os.PathLike)) else dict(spec)
    if "path" not in entry:
      raise DataError(f"product entry {entry!r} has no 'path'")
    path = os.path.expanduser(os.fspath(entry["path"]))
    if remote.is_remote(path):   # never listed; '?' starts a signed URL's query
      remote.check_not_listed(path, "product")
      expanded.append(spec)
      continue
    if not set("*?[") & set(path):
      expanded.append(spec)
      continue
    matches = sorted(m.rstrip(os.sep) for m in glob.glob(path))
    if not matches:
      raise DataError(f"{path}: the pattern matches no product folder or image")
    if len(matches) > 1 and entry.get("product_id"):
      raise DataError(f"{path}: one product_id for a pattern that matches {len(matches)} "
                      f"products")
    expanded += [{**entry, "path": m} for m in matches]
  return expanded


def spec_path(spec) -> str:
  return os.path.expanduser(os.fspath(spec if isinstance(spec, (str, os.PathLike))
                                      else spec["path"]))


def distinct_ids(acqs: Sequence[Acquisition], paths: Sequence[str]) -> list[Acquisition]:
  """Products whose ids repeat (SSL4EO's s2a/ and s2c/ hold date folders of the same name)
  get their parent folders' names prefixed, '_'-joined, until every id differs."""
  base = [a.product_id for a in acqs]
  parents = [[x for x in os.path.normpath(os.path.abspath(p)).split(os.sep)[:-1] if x]
             for p in paths]
  ids = list(base)
  for depth in range(1, max(map(len, parents), default=0) + 1):
    repeated = {i for i in ids if ids.count(i) > 1}
    if not repeated:
      break
    ids = ["_".join(parents[k][-depth:] + [base[k]]) if ids[k] in repeated else ids[k]
           for k in range(len(ids))]
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise DataError(f"products with the same id {repeated}: give each a distinct product_id")
  return [a if i == a.product_id else dataclasses.replace(a, product_id=i)
          for a, i in zip(acqs, ids)]
