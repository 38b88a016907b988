"""Loads a pickle of numpy arrays without ever running code from it.

`pickle.load` calls whatever global a file names (os.system, eval, ...), so a downloaded
pickle could run anything. `ArrayUnpickler.find_class` admits only what numpy needs to
rebuild arrays and scalars (dicts, lists, numbers and strings need no global at all) and
refuses every other global, naming the file and the global, before it is called.
"""

import pickle

from ee_jax.errors import DataError

ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),   # ndarray, pickle protocols 0-4 (numpy 1)
    ("numpy._core.multiarray", "_reconstruct"),  # ... (numpy 2)
    ("numpy.core.multiarray", "scalar"),         # numpy scalars
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),       # ndarray, pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),                       # bytes in protocol-2 pickles (str -> bytes)
})


class ArrayUnpickler(pickle.Unpickler):
  """An unpickler that resolves only the globals in ALLOWED."""

  def __init__(self, file, path: str):
    super().__init__(file)
    self.path = path

  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise DataError(f"{self.path}: refused to load global '{module}.{name}' (only numpy "
                      f"arrays, dicts, lists and scalars are loaded from pickles)")
    return super().find_class(module, name)


def load_arrays(path: str):
  """The object in the pickle at `path`, loaded with ArrayUnpickler."""
  try:
    with open(path, "rb") as f:
      return ArrayUnpickler(f, path).load()
  except DataError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise DataError(f"{path}: not a readable pickle of arrays ({type(e).__name__}: {e})") from e
