"""TFRecord framing without TensorFlow: records of a (gzip) file, both CRCs checked.

A record is: uint64 length (little-endian), uint32 masked CRC32C of those 8 bytes, the
data, uint32 masked CRC32C of the data. CRC32C (Castagnoli) comes from `google-crc32c`
(C, hardware-accelerated): the pure-Python table, kept as the fallback when that package is
absent, cost 0.12-0.21 s per MiB, most of an MTLCC build (benchmarks/mtlcc_build.py).
"""

import gzip
import struct

import numpy as np

from ee_jax.errors import DataError

try:
  import google_crc32c
except ImportError:  # the fallback: tests reload this module without it
  google_crc32c = None

_POLY = 0x82F63B78  # Castagnoli, reflected


def _table() -> np.ndarray:
  t = np.arange(256, dtype=np.uint64)
  for _ in range(8):
    t = np.where(t & 1, (t >> 1) ^ _POLY, t >> 1)
  return t.astype(np.uint32)


_TABLE = [int(v) for v in _table()]


def crc32c_table(data: bytes) -> int:
  """CRC32C one byte at a time from a 256-entry table: the fallback."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


if google_crc32c is not None:
  CRC32C_IMPL = f"google-crc32c ({google_crc32c.implementation})"

  def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))
else:
  CRC32C_IMPL = "python table"
  crc32c = crc32c_table


def masked_crc32c(data: bytes) -> int:
  """TFRecord's mask: rotate right by 15 bits and add a constant (mod 2^32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str) -> list[bytes]:
  """Every record of the TFRecord file at `path` (gzip if it ends in .gz)."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      blob = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: unreadable ({e})") from e
  records, pos = [], 0
  while pos < len(blob):
    if pos + 12 > len(blob):
      raise DataError(f"{path}: truncated record header at byte {pos}")
    head = blob[pos:pos + 8]
    (length,), (crc,) = struct.unpack("<Q", head), struct.unpack("<I", blob[pos + 8:pos + 12])
    if masked_crc32c(head) != crc:
      raise DataError(f"{path}: corrupt record at byte {pos} (length CRC mismatch)")
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(blob):
      raise DataError(f"{path}: truncated record at byte {pos} ({length} bytes announced)")
    data = blob[start:end]
    if masked_crc32c(data) != struct.unpack("<I", blob[end:end + 4])[0]:
      raise DataError(f"{path}: corrupt record at byte {pos} (data CRC mismatch)")
    records.append(data)
    pos = end + 4
  return records
