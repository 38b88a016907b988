"""What the builders of the paper's benchmarks share: files under `manual_dir`, DNs, series.

The benchmarks come as downloaded folders in their publishers' layouts. Nothing is fetched:
every builder reads `params.manual_dir`, and a missing file is one DataError naming it.
Series of varying length are padded to the dataset's fixed T (the contract's [T, ...])
with `valid=False` and `dates=0` at the end: the masked temporal pooling of the 'shared'
backbone gives padded steps zero weight, so padding changes no feature.
"""

import datetime
import os

import numpy as np

from ee_jax.errors import ConfigError, DataError

MAX_DN = np.iinfo(np.uint16).max


def manual_root(params: dict, builder: str) -> str:
  """`params.manual_dir`, checked to be an existing folder."""
  root = params.get("manual_dir") or ""
  if not root:
    raise ConfigError(f"data.builder.manual_dir ({builder}): not set; give the folder of "
                      f"the downloaded dataset (--config.data.builder.manual_dir=PATH)")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DataError(f"data.builder.manual_dir ({builder}): {root} is not a folder")
  return root


def need(path: str, builder: str) -> str:
  """`path` if it exists, else the one error an incomplete download gets."""
  if not os.path.exists(path):
    raise DataError(f"{builder}: missing file {path} (incomplete download or wrong "
                    f"data.builder.manual_dir?)")
  return path


def first_missing(paths, builder: str) -> None:
  """Raises for the first of `paths` that does not exist, saying how many are missing."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    more = f" ({len(missing)} files missing in all)" if len(missing) > 1 else ""
    raise DataError(f"{builder}: missing file {missing[0]}{more} (incomplete download or "
                    f"wrong data.builder.manual_dir?)")


def to_dn(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Stored values -> (uint16 DNs, observed mask). Negative, non-finite or too large values
  (nodata conventions such as -10000) are unobserved and carry DN 0."""
  a = np.asarray(values)
  if a.dtype == np.uint16:
    return a, np.ones(a.shape, bool)
  f = a.astype(np.float64)
  ok = np.isfinite(f) & (f >= 0) & (f <= MAX_DN)
  return np.where(ok, np.rint(np.where(ok, f, 0)), 0).astype(np.uint16), ok


def upsample_to(band: np.ndarray, size: tuple[int, int], where: str) -> np.ndarray:
  """[..., h, w] -> [..., H, W] by nearest-neighbour repetition for integer factors (20 m
  and 60 m bands onto the 10 m grid). Repetition keeps every DN as measured."""
  h, w = band.shape[-2:]
  if (h, w) == tuple(size):
    return band
  fy, fx = size[0] // max(h, 1), size[1] // max(w, 1)
  if fy < 1 or fx < 1 or fy * h != size[0] or fx * w != size[1]:
    raise DataError(f"{where}: a band of {h}x{w} pixels does not divide the 10 m grid of "
                    f"{size[0]}x{size[1]} pixels")
  return np.repeat(np.repeat(band, fy, axis=-2), fx, axis=-1)


def sort_by_date(image, valid, dates):
  """The series in time order (stable: equal dates keep their stored order)."""
  order = np.argsort(np.asarray(dates), kind="stable")
  return image[order], valid[order], np.asarray(dates, np.int32)[order]


def pad_series(image, valid, dates, num_dates: int, where: str):
  """Pads [T, ...] to `num_dates` steps (valid False, DN 0, date 0) at the end."""
  t = image.shape[0]
  if t > num_dates:
    raise DataError(f"{where}: {t} dates, more than num_dates={num_dates}; raise "
                    f"data.builder.num_dates (or set it to 0: the longest series)")
  extra = num_dates - t
  if extra:
    image = np.concatenate([image, np.zeros((extra,) + image.shape[1:], image.dtype)])
    valid = np.concatenate([valid, np.zeros((extra,) + valid.shape[1:], bool)])
    dates = np.concatenate([dates, np.zeros(extra, np.int32)])
  return image, valid, np.asarray(dates, np.int32)


def doy_to_yyyymmdd(year: int, doy: int) -> int:
  """Day of year (1-366) of `year` -> YYYYMMDD."""
  d = datetime.date(int(year), 1, 1) + datetime.timedelta(days=int(doy) - 1)
  return int(d.strftime("%Y%m%d"))


def check_int(params: dict, key: str, lo: int, builder: str, hi: int | None = None) -> None:
  v = params[key]
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo or \
      (hi is not None and v > hi):
    span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise ConfigError(f"data.builder.{key} ({builder}): must be an integer {span}, got {v!r}")
