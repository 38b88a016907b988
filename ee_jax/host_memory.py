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
given back) and M_TOP_PAD = 256 MiB (heaps grow in large steps). Measured (docs/scaling.md):
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
it is left to the user (docs/scaling.md). `EE_JAX_MALLOC_TUNING=0` leaves malloc as it is.
Elsewhere than Linux with glibc nothing is changed.
"""

import ctypes
import os
import platform

ENV = "EE_JAX_MALLOC_TUNING"
# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 2 ** 28))


def tune_malloc(environ=None) -> bool:
  """Applies SETTINGS where glibc is the C library and ENV is not '0'; returns whether it
  did."""
  env = os.environ if environ is None else environ
  if env.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
