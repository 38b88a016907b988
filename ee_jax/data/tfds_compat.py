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

Both use private TFDS names (no public API offers either), so setup.cfg pins
tensorflow-datasets below the next minor release and `private_api_problems()` (run by
tests/test_tfds_compat.py) says which of those names moved before raising the bound.
"""

import importlib.util
import inspect
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


def _name(owner) -> str:
  return owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"


def private_api_problems() -> list[str]:
  """One line per private TFDS name this module relies on that is gone or changed shape
  (empty when all are as in the TFDS versions setup.cfg allows)."""
  problems = []

  def moved(what: str, detail: str) -> None:
    problems.append(f"ee_jax/data/tfds_compat.py relies on {what}: {detail} in "
                    f"tensorflow-datasets {tfds_version()}")

  def need(owner, name: str, params=None) -> None:
    obj = getattr(owner, name, None)
    if obj is None:
      return moved(f"{_name(owner)}.{name}", "it is gone")
    if params is not None and list(inspect.signature(obj).parameters) != params:
      moved(f"{_name(owner)}.{name}({', '.join(params)})",
            f"it takes ({', '.join(inspect.signature(obj).parameters)})")

  for name in ("_hkey_to_bytes", "_read_hkey", "HKEY_SIZE_BYTES", "MAX_MEM_BUFFER_SIZE",
               "_Bucket", "Shuffler"):
    need(shuffle, name)
  bucket = getattr(shuffle, "_Bucket", None)
  if bucket is not None:
    for name, params in (("add", ["self", "key", "data"]), ("read_values", ["self"]),
                         ("del_file", ["self"]), ("flush", ["self"])):
      need(bucket, name, params)
    try:
      fields = vars(bucket("unused_path"))  # __init__ opens nothing
    except TypeError as e:
      fields = {}
      moved(f"{_name(bucket)}(path)", f"it raises {e}")
    for field in ("_path", "_fobj", "_length", "_size"):
      if fields and field not in fields:
        moved(f"the instance attribute {_name(bucket)}.{field}", "it is gone")
  shuffler = getattr(shuffle, "Shuffler", None)
  if shuffler is not None:  # the patches act only through module globals Shuffler reads
    read = {n for f in vars(shuffler).values() if hasattr(f, "__code__")
            for n in f.__code__.co_names}
    for global_name in ("MAX_MEM_BUFFER_SIZE", "_Bucket"):
      if global_name not in read:
        moved(f"{_name(shuffler)} reading shuffle.{global_name}", "no method of it does")
  for name in ("_log_download_bytes", "_log_download_done"):
    need(dataset_builder.DatasetBuilder, name, ["self"])
  need(tqdm_utils, "display_progress_bar", ["enable"])
  return problems


def tfds_version() -> str:
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  return tensorflow_datasets.__version__


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
