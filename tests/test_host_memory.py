"""ee_jax/host_memory.py: with malloc tuned, a freed large block stays in the process for
the next allocation instead of going back to the kernel, from the main thread and from a
worker thread (where XLA CPU allocates a step's temporaries).

Measured with malloc and free themselves (ctypes) in a fresh process, so the figures follow
from glibc's documented rules and not from where XLA happens to allocate on a machine:
a 48 MiB block is above the largest size untuned glibc serves from a heap (its mmap
threshold rises at most to 32 MiB), so untuned it is mapped for itself and unmapped by
free(), and the process's resident memory drops by the block; tuned (no mmap, trim
threshold 2 GiB) it comes from a heap (under the 64 MiB a thread's heap holds) and free()
keeps its pages.
"""

import os
import platform
import subprocess
import sys

import pytest

from ee_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BLOCK = 48 << 20

# Prints whether tuning applied, then for the main thread and for a new thread: how many
# bytes of resident memory went back to the kernel when a written block was freed and one
# of the same size allocated, and how many writing the new block added.
PROGRAM = """
import ctypes, os, sys, threading
sys.path.insert(0, sys.argv[1])
from ee_jax import host_memory
print("tuned", host_memory.tune_malloc())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, PAGE = int(sys.argv[2]), os.sysconf("SC_PAGE_SIZE")
STATM = os.open("/proc/self/statm", os.O_RDONLY)

def resident():
  os.lseek(STATM, 0, os.SEEK_SET)
  return int(os.read(STATM, 128).split()[1]) * PAGE

def cycle(where):
  p = libc.malloc(BLOCK)
  ctypes.memset(p, 1, BLOCK)   # every page resident
  written = resident()
  libc.free(p)
  q = libc.malloc(BLOCK)       # nothing allocated in between: the freed block fits exactly
  reallocated = resident()
  ctypes.memset(q, 1, BLOCK)
  print(where, written - reallocated, resident() - reallocated)
  libc.free(q)

cycle("main")
t = threading.Thread(target=cycle, args=("thread",))
t.start()
t.join()
"""


def _run(tuning: str) -> dict:
  env = dict(os.environ, EE_JAX_MALLOC_TUNING=tuning)
  out = subprocess.run([sys.executable, "-c", PROGRAM, REPO, str(BLOCK)], env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
  assert rows["tuned"] == [str(tuning == "1")], out
  return {where: tuple(map(int, rows[where])) for where in ("main", "thread")}


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")
def test_tuned_malloc_keeps_freed_blocks_for_reuse():
  untuned, tuned = _run("0"), _run("1")
  for where in ("main", "thread"):
    returned, added = untuned[where]
    # Untuned: the block's own mapping is unmapped, all its pages leave; the next block is
    # a new mapping whose pages all become resident when written.
    assert returned >= BLOCK and added >= BLOCK, (where, untuned)
    returned, added = tuned[where]
    # Tuned: nothing goes back, and the new block is the freed one, already resident (the
    # interpreter's own allocations while printing may add a page or two: far under 1 MiB).
    assert returned <= 0 and added < 1 << 20, (where, tuned)


def test_switch_and_other_c_libraries_leave_malloc_alone(monkeypatch):
  """(Where it applies, the subprocesses above show it applied: 'tuned True'.)"""
  assert host_memory.tune_malloc({host_memory.ENV: "0"}) is False
  assert host_memory.tune_malloc({host_memory.ENV: "off"}) is False
  monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
  assert host_memory.tune_malloc({}) is False
