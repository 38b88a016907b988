"""TFDS without TensorFlow, and without the noise TFDS prints for datasets built locally.

Quiet (applied on import, so before any builder exists): absl's "Using custom data
configuration" warning (every config here is a custom one), TFDS's "Downloading and
preparing dataset Unknown size" / "downloaded and prepared" lines when nothing is
downloaded, and TFDS's tqdm bars when stderr is not a terminal (carriage returns and
cursor escapes in log files).

Large splits without TensorFlow (`install()`): TFDS's writer spills examples beyond its 1 GB
in-memory shuffle buffer (`shuffle.MAX_MEM_BUFFER_SIZE`) into temporary bucket files through `tf.io.gfile`, so a large scene (a full 10980 x 10980 product is ~3 GB of
tiles) fails with "No module named 'tensorflow'". When TensorFlow is absent we give those
bucket files plain `epath` I/O (same byte format), and lower the in-memory buffer so a
build's peak memory stays well under 2 GiB. Nothing changes when TensorFlow is installed.
"""

import importlib.util
import logging
import struct
import sys

from etils import epath
from tensorflow_datasets.core import dataset_builder, shuffle
from tensorflow_datasets.core.utils import tqdm_utils

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


# ---------------------------------------------------------------------------- quiet
QUIET_MESSAGES = ("Using custom data configuration",)


class _DropMessages(logging.Filter):
  """Drops absl records that start with one of QUIET_MESSAGES."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(QUIET_MESSAGES)


_tfds_log_download_bytes = dataset_builder.DatasetBuilder._log_download_bytes  # pylint: disable=protected-access
_tfds_log_download_done = dataset_builder.DatasetBuilder._log_download_done  # pylint: disable=protected-access


def _log_download_bytes(self) -> None:
  if self.info.download_size:   # only when something is downloaded
    _tfds_log_download_bytes(self)


def _log_download_done(self) -> None:
  if self.info.download_size:
    _tfds_log_download_done(self)


def quiet() -> None:
  """Idempotent: the filters and overrides named in the module docstring."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropMessages) for f in absl_logger.filters):
    absl_logger.addFilter(_DropMessages())
  builder = dataset_builder.DatasetBuilder
  builder._log_download_bytes = _log_download_bytes  # pylint: disable=protected-access
  builder._log_download_done = _log_download_done  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(sys.stderr.isatty())


quiet()
