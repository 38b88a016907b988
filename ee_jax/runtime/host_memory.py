"""Step buffers that stay mapped: glibc's malloc told to keep freed memory for reuse.

Imports nothing from JAX. `tune_malloc()` is called by launch.py and the benchmarks before
the first step; it applies to every later allocation of the process.

Why: XLA CPU allocates each step's temporaries (tens of MB) with malloc and frees them when
the step ends. glibc hands blocks that large back to the kernel (munmap, or trimming the top
of the heap), so the next step writes to fresh pages, each a page fault and a page of
zeroing in the kernel: 28,400 page faults per fine-tuning step at the study's shapes,
measured with `perf stat -e page-faults`, about a tenth of the step's time. Three settings
(mallopt) keep freed memory in the process instead: M_MMAP_MAX = 0 (blocks come from the
heap, not from their own mappings), M_TRIM_THRESHOLD = 2 GiB - 1 (the top of a heap is not
given back) and M_TOP_PAD = 256 MiB (heaps grow in large steps). Measured (docs/perf_log.md):
page faults per fine-tuning step 28,400 -> under 200, the step 1.15x faster.

Costs and limits: memory freed during a run is not returned to the system until the process
ends (a training process reuses it at every step; the study's pre-training peaked at 1.26
GB resident against 1.23 untuned). A block over 64 MiB asked for by a worker thread is
still mapped and unmapped by glibc whatever the settings (a thread's own heap is at most 64
MiB), and XLA CPU allocates a step's temporaries as one block: the study's pre-training
step (71 MB a device) still faults about 36,000 pages a step. XLA can cut them into blocks
a thread's heap holds (`XLA_FLAGS=--xla_multiheap_size_constraint_per_heap=62914560`:
that step 247 -> 210 ms, the 64 x 64 benchmark step about 7 % faster once warm) but the
process then holds 1.5-2x the resident memory (1.26 -> 1.92 GB; 4.7 -> 7.5-9.2 GB), so
it is left to the user (docs/perf_log.md).

Those freshly mapped blocks are put on transparent huge pages instead
(`restart_with_huge_pages`, called first by launch.py and benchmarks/train_step.py): glibc
2.35+ advises the kernel to back the blocks it maps with 2 MiB pages when the tunable
`glibc.malloc.hugetlb=1` is set, and tunables are read only when a program starts, so the
process executes itself again once (same PID, arguments and interpreter options) with it
added to GLIBC_TUNABLES. Where the kernel's THP mode is `madvise` (as on the 2-core VM of
docs/perf_log.md) the study's pre-training step faults about 1,000 pages a step instead of
36,000 and takes 0.92x the time, the 64 x 64 pre-training step 0.90x; fine-tuning, whose
blocks stay in the heaps, is unchanged; the process holds 1-8 % more resident memory.
Under mode `always` the kernel does this anyway, under `never` it can't.

Both are for the CPU backend only: where JAX will run on a GPU or TPU (JAX_PLATFORMS names
another platform first, or an accelerator plugin such as libtpu or jax_cuda12_plugin is
installed and JAX_PLATFORMS does not ask for the CPU) nothing is changed, since the
device's memory is not malloc's. `EE_JAX_MALLOC_TUNING=0` leaves malloc as it is (no
settings, no restart); `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps the settings without
huge pages. Elsewhere than Linux with glibc nothing is changed.
"""

import ctypes
import importlib.util
import os
import platform
import sys

ENV = "EE_JAX_MALLOC_TUNING"
# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 2 ** 28))
HUGE_PAGES = "glibc.malloc.hugetlb=1"   # the tunable (glibc >= 2.35): madvise mapped blocks
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Packages whose presence means JAX picks an accelerator by default.
ACCELERATOR_PLUGINS = ("libtpu", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin")


def cpu_backend_expected(env) -> bool:
  """Whether JAX will run on the CPU, decided without importing JAX: JAX_PLATFORMS's first
  platform where it is set, else whether no accelerator plugin is installed."""
  platforms = env.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def _turned_off(env) -> bool:
  return (env.get(ENV, "1").strip().lower() in ("0", "off", "false", "no")
          or not cpu_backend_expected(env))


def _glibc_version() -> tuple[int, ...] | None:
  if platform.system() != "Linux":
    return None
  name, version = platform.libc_ver()
  if name != "glibc":
    return None
  try:
    return tuple(int(part) for part in version.split("."))
  except ValueError:
    return None


def thp_mode(path: str = THP_MODE) -> str | None:
  """The kernel's transparent-huge-page mode (the bracketed word: always, madvise or
  never), None where it can't be read."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def environ_with_huge_pages(environ=None, mode: str | None = None,
                            glibc: tuple[int, ...] | None = None) -> dict | None:
  """The environment to execute again with, so that glibc's mapped blocks get huge pages;
  None when a restart would change nothing: tuning off, not glibc 2.35 or later, a THP mode
  other than madvise, or the tunable already in GLIBC_TUNABLES (the restarted process)."""
  env = dict(os.environ if environ is None else environ)
  glibc = _glibc_version() if glibc is None else glibc
  mode = thp_mode() if mode is None else mode
  tunables = env.get("GLIBC_TUNABLES", "")
  if (_turned_off(env) or glibc is None or glibc < (2, 35) or mode != "madvise"
      or "glibc.malloc.hugetlb=" in tunables):
    return None
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES
  return env


def restart_with_huge_pages() -> None:
  """Executes this program again with `HUGE_PAGES` added to GLIBC_TUNABLES, where
  `environ_with_huge_pages` says it helps; returns where it doesn't (or can't exec). Call
  it first thing in a program's main, before threads or open work: nothing of this process
  but its PID and open files survives."""
  env = environ_with_huge_pages()
  # A program from -c or stdin can't be read again: only a script or module restarts.
  if (env is None or not sys.executable or not getattr(sys, "orig_argv", None)
      or not os.path.isfile(sys.argv[0])):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return


def tune_malloc(environ=None) -> bool:
  """Applies SETTINGS where glibc is the C library and ENV is not '0'; returns whether it
  did."""
  env = os.environ if environ is None else environ
  if _turned_off(env) or _glibc_version() is None:
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
