"""Sentinel-2 band names, native resolutions, and product-name conventions."""

import re

from ee_jax.errors import DataError

S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                "B10", "B11", "B12")
S2_L2A_BANDS = tuple(b for b in S2_L1C_BANDS if b != "B10")
S2_NATIVE_GSD = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                 "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}

# A band token inside a file name: B2, B02, B8A, b8a, bounded by separators.
_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B(?:8A|\d{1,2}))(?=[_\-.]|$)", re.IGNORECASE)
# BigEarthNet v1 patch names drop the time's leading zero (20170924T93020): 5 or 6 digits.
_SENSING_DATE = re.compile(r"(?:^|_)(\d{8})T\d{5,6}")
_BASELINE = re.compile(r"_N(\d{2})(\d{2})(?:_|$)")

# Processing baseline 04.00 (January 2022) and later add this to every digital number.
BASELINE_04_OFFSET = 1000


def normalise_band_name(name: str) -> str:
  """'b2', 'B2', 'B02' -> 'B02'; 'b8a' -> 'B8A'."""
  name = name.strip().upper()
  m = re.fullmatch(r"B(8A|\d{1,2})", name)
  if not m:
    return name
  n = m.group(1)
  return "B8A" if n == "8A" else f"B{int(n):02d}"


def band_in_filename(filename: str) -> str | None:
  """The band a file holds, judged from its name (the last band-like token), or None."""
  stem = filename.rsplit("/", 1)[-1]
  tokens = _BAND_TOKEN.findall(stem.rsplit(".", 1)[0])
  return normalise_band_name(tokens[-1]) if tokens else None


def sensing_date(product_name: str) -> int:
  """YYYYMMDD of the first 'YYYYMMDDThhmmss' in a product name, else 0 (unknown)."""
  m = _SENSING_DATE.search(product_name)
  return int(m.group(1)) if m else 0


def parse_date(value, where: str) -> int:
  """A date given by a user or a manifest: YYYYMMDD (int or text) or YYYY-MM-DD -> int."""
  text = str(value).strip()
  digits = text.replace("-", "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text
  if re.fullmatch(r"\d{8}", digits) or digits == "0":
    return int(digits)
  raise DataError(f"{where}: date must be YYYYMMDD or YYYY-MM-DD, got {value!r}")


def processing_baseline(product_name: str) -> float | None:
  """The processing baseline in a product name ('_N0400_' -> 4.0), else None.

  'N9999' (reprocessed archives such as Major TOM's older products) is taken as unknown.
  """
  m = _BASELINE.search(product_name)
  if not m or m.group(1) == "99":
    return None
  return int(m.group(1)) + int(m.group(2)) / 100


def default_offset(product_name: str) -> int:
  """The DN offset to remove: 1000 for baseline >= 04.00, else 0."""
  baseline = processing_baseline(product_name)
  return BASELINE_04_OFFSET if baseline is not None and baseline >= 4.0 else 0
