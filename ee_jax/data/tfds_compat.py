"""Lets TFDS write splits larger than its 1 GB in-memory shuffle buffer without TensorFlow.

TFDS's writer spills examples beyond `shuffle.MAX_MEM_BUFFER_SIZE` into temporary bucket
files through `tf.io.gfile`, so a large scene (a full 10980 x 10980 product is ~3 GB of
tiles) fails with "No module named 'tensorflow'". When TensorFlow is absent we give those
bucket files plain `epath` I/O (same byte format), and lower the in-memory buffer so a
build's peak memory stays well under 2 GiB. Nothing changes when TensorFlow is installed.
"""

import importlib.util
import struct

from etils import epath
from tensorflow_datasets.core import shuffle

SHUFFLE_BUFFER_BYTES = 256 * 2**20
_patched = False


def _add(self, key, data):
  if not self._fobj:
    epath.Path(self._path).parent.mkdir(parents=True, exist_ok=True)
    self._fobj = epath.Path(self._path).open("wb")
  self._fobj.write(shuffle._hkey_to_bytes(key))  # pylint: disable=protected-access
  self._fobj.write(struct.pack("=Q", len(data)))
  self._fobj.write(data)
  self._length += 1
  self._size += len(data)


def _read_values(self):
  self.flush()
  path = epath.Path(self._path)
  if not path.exists():
    return
  with path.open("rb") as f:
    while True:
      buff = f.read(shuffle.HKEY_SIZE_BYTES)
      if not buff:
        break
      hkey = shuffle._read_hkey(buff)  # pylint: disable=protected-access
      size = struct.unpack("=Q", f.read(8))[0]
      yield hkey, f.read(size)


def _del_file(self):
  path = epath.Path(self._path)
  if path.exists():
    path.unlink()


def install() -> None:
  """Idempotent; a no-op when TensorFlow is importable."""
  global _patched
  if _patched or importlib.util.find_spec("tensorflow") is not None:
    return
  bucket = shuffle._Bucket  # pylint: disable=protected-access
  bucket.add, bucket.read_values, bucket.del_file = _add, _read_values, _del_file
  shuffle.MAX_MEM_BUFFER_SIZE = SHUFFLE_BUFFER_BYTES
  _patched = True
