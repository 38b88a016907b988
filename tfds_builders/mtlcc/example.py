"""A `tf.train.Example` decoded from protobuf wire format (no TensorFlow, no protobuf).

Example {Features features = 1}; Features {map<string, Feature> feature = 1} (map entries:
key = 1, value = 2); Feature {oneof: BytesList bytes_list = 1, FloatList float_list = 2,
Int64List int64_list = 3}, each list `repeated value = 1`, floats and ints packed or not.
"""


import numpy as np


class WireError(ValueError):
  """Bytes that are not a well-formed Example."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise WireError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise WireError("varint longer than 10 bytes")


def _fields(buf: bytes):
  """Yields (field number, wire type, value): int for varint/fixed, bytes for length-delimited."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      n, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise WireError(f"unsupported wire type {wire}")
    if pos > len(buf):
      raise WireError("truncated field")
    yield number, wire, value


def _signed(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: bytes):
  """Feature -> list of bytes, float32 array or int64 array."""
  for number, wire, value in _fields(buf):
    if wire != 2:
      raise WireError("Feature holds a non-message field")
    if number == 1:
      return [v for n, w, v in _fields(value) if n == 1 and w == 2]
    if number == 2:
      parts = []
      for n, w, v in _fields(value):
        if n == 1:
          parts.append(np.frombuffer(v, "<f4"))  # packed (wire 2) or one fixed32 (wire 5)
      return np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if number == 3:
      out = []
      for n, w, v in _fields(value):
        if n != 1:
          continue
        if w == 0:
          out.append(_signed(v))
        elif w == 2:
          pos = 0
          while pos < len(v):
            x, pos = _varint(v, pos)
            out.append(_signed(x))
        else:
          raise WireError(f"Int64List value of wire type {w}")
      return np.array(out, np.int64)
  return []  # an empty Feature


def parse_example(buf: bytes) -> dict:
  """Serialized Example -> {name: list of bytes | float32 array | int64 array}."""
  out = {}
  for number, wire, features in _fields(buf):
    if number != 1 or wire != 2:
      continue
    for n, w, entry in _fields(features):
      if n != 1 or w != 2:
        continue
      key, value = None, b""
      for en, ew, ev in _fields(entry):
        if en == 1 and ew == 2:
          key = ev.decode("utf-8")
        elif en == 2 and ew == 2:
          value = ev
      if key is None:
        raise WireError("map entry without a key")
      out[key] = _feature(value)
  return out
