"""A `tf.train.Example` decoded with TFDS's copy of its proto (no TensorFlow needed), into
plain Python/NumPy values so the builder does not depend on protobuf types."""

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow_datasets.proto import tf_example_pb2


class WireError(ValueError):
  """Bytes that are not a well-formed Example."""


def _feature(feature):
  """Feature -> list of bytes, float32 array, int64 array, or [] when it holds no list."""
  kind = feature.WhichOneof("kind")
  if kind == "bytes_list":
    return list(feature.bytes_list.value)
  if kind == "float_list":
    return np.array(feature.float_list.value, np.float32)
  if kind == "int64_list":
    return np.array(feature.int64_list.value, np.int64)
  return []


def parse_example(buf: bytes) -> dict:
  """Serialized Example -> {name: list of bytes | float32 array | int64 array}."""
  try:
    example = tf_example_pb2.Example.FromString(buf)
  except DecodeError as e:
    raise WireError(str(e)) from e
  return {key: _feature(value) for key, value in example.features.feature.items()}
