"""JAX's persistent compilation cache for launch.py commands.

A study compiles the same fine-tuning step for every seed of a fraction (the seed is an
argument, not a constant of the program), and a repeated command compiles everything
again: with the cache on, XLA's executables are kept on disk and loaded instead of
recompiled, in the same process (a new step closure with the same program) and across
commands. Where: $EE_JAX_COMPILATION_CACHE, else $XDG_CACHE_HOME/ee_jax/xla, else
~/.cache/ee_jax/xla; `EE_JAX_COMPILATION_CACHE=off` turns it off. Entries are keyed by the
program, the JAX/XLA version and the device, so a stale entry is never used; the folder
is capped at `MAX_BYTES` (least recently used entries go first; the cap needs the
`filelock` package, a dependency: without it the folder is not capped).
"""

import gc
import os

import jax

ENV = "EE_JAX_COMPILATION_CACHE"
MAX_BYTES = 4 * 2 ** 30
MIN_COMPILE_SECONDS = 0.5   # cheaper programs are not worth a disk entry


def cache_dir() -> str | None:
  """The folder the cache uses, or None when it is off."""
  value = os.environ.get(ENV, "").strip()
  if value.lower() in ("off", "0", "false", "none"):
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "ee_jax", "xla")


def enable() -> str | None:
  """Turns the cache on (unless switched off); returns its folder. A folder that cannot
  be created leaves the cache off: it only saves time, it must never stop a run."""
  path = cache_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  try:  # JAX enforces the cap with file locks; without the package every entry read fails
    import filelock  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  except ImportError:
    pass
  return path


def release_compiled_programs() -> None:
  """Frees every compiled program this process holds (JAX's in-memory caches).

  Why: JAX keeps each executable it compiled or loaded for the life of the process, even
  once the function it came from is gone, and XLA CPU maps every executable's code into
  memory in dozens of separate mappings. A study's runs each build new step closures, so
  one process running many of them (or the test suite) climbs towards Linux's limit of
  65,530 mappings per process (vm.max_map_count), where the next compile aborts or
  segfaults inside XLA. Called between runs (by a study when the mappings get many:
  `release_if_crowded`); the next run's programs come back from the persistent cache above.
  """
  from ee_jax.runtime import shared_steps  # pylint: disable=import-outside-toplevel
  shared_steps.clear()   # its steps' programs go with JAX's caches
  jax.clear_caches()
  gc.collect()   # drop executables held only by dead step closures now, not at some later GC


# Share of the process's memory-mapping limit past which `release_if_crowded` frees the
# compiled programs. A default study's 24 runs add a few thousand mappings in all once their
# steps are shared (ee_jax/runtime/shared_steps.py), far below a quarter of Linux's default 65,530.
CROWDED_SHARE = 0.25


def memory_mappings() -> tuple[int, int] | None:
  """(mappings this process holds, the most it may hold), or None where /proc does not say."""
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      limit = int(f.read())
    with open("/proc/self/maps", "rb") as f:
      held = sum(1 for _ in f)
  except (OSError, ValueError):
    return None
  return held, limit


def release_if_crowded() -> bool:
  """`release_compiled_programs` once the process holds CROWDED_SHARE of its mapping limit
  (always where that cannot be read), so that runs in between keep sharing compiled steps.
  Returns whether it released."""
  found = memory_mappings()
  if found is not None and found[0] < CROWDED_SHARE * found[1]:
    return False
  release_compiled_programs()
  return True
