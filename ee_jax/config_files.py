"""Config files found by path or by the name of a shipped config.

`--config=configs/X.py[:arg]` names a file relative to the working directory; an installed
wheel carries the same files as the package `configs` (beside `ee_jax`), so where that path
does not exist, `configs/X.py`, `X.py` and `X` are looked up among the shipped configs and
the command works from any directory.
"""

import os
import re

from ee_jax.errors import ConfigError

# The shipped configs: the package `configs` beside `ee_jax`, in a checkout, an editable
# install and a wheel alike.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
_NAME = re.compile(r"^(?:\./)?(?:configs/)?([A-Za-z]\w*?)(?:\.py)?$")


def shipped_names() -> list[str]:
  """Names of the shipped experiment configs (modules defining get_config, not helpers)."""
  if not os.path.isdir(SHIPPED_DIR):
    return []
  names = []
  for f in sorted(os.listdir(SHIPPED_DIR)):
    if f.endswith(".py") and not f.startswith("_"):
      with open(os.path.join(SHIPPED_DIR, f), encoding="utf-8") as fh:
        if re.search(r"^def get_config\(", fh.read(), re.M):
          names.append(f[:-3])
  return names


def find(path: str) -> str | None:
  """The file `path` names: itself where it exists, else the shipped config of that name."""
  if os.path.isfile(os.path.expanduser(path)):
    return os.path.expanduser(path)
  match = _NAME.match(path)
  if match and match.group(1) in shipped_names():
    return os.path.join(SHIPPED_DIR, match.group(1) + ".py")
  return None


def resolve(spec: str, what: str = "--config") -> str:
  """`path[:arg]` with the path made one that exists (ConfigError naming `what` and the
  shipped names otherwise); the `:arg` is kept as given."""
  path, sep, arg = spec.partition(":")
  found = find(path)
  if found is None:
    raise ConfigError(f"{what}: file not found: {path} (from {os.getcwd()}), nor a shipped "
                      f"config of that name; shipped: {', '.join(shipped_names()) or 'none'}")
  return found + sep + arg
