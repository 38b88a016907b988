"""ee_jax/runtime/host_memory.py: with malloc tuned, a freed large block stays in the process for
the next allocation instead of going back to the kernel, from the main thread and from a
worker thread (where XLA CPU allocates a step's temporaries).

Measured with malloc and free themselves (ctypes) in a fresh process, so the figures follow
from glibc's documented rules and not from where XLA happens to allocate on a machine:
a 48 MiB block is above the largest size untuned glibc serves from a heap (its mmap
threshold rises at most to 32 MiB), so untuned it is mapped for itself and unmapped by
free(), and the process's resident memory drops by the block; tuned (no mmap, trim
threshold 2 GiB) it comes from a heap (under the 64 MiB a thread's heap holds) and free()
keeps its pages.

The restart with huge pages is checked the same way: a fresh process that restarts, maps a
block with malloc and reads the kernel's flags of that mapping (MADV_HUGEPAGE shows as `hg`).
"""

import os
import platform
import subprocess
import sys

import pytest

from ee_jax.runtime import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BLOCK = 48 << 20

# Prints whether tuning applied, then for the main thread and for a new thread: how many
# bytes of resident memory went back to the kernel when a written block was freed and one
# of the same size allocated, and how many writing the new block added.
PROGRAM = """
import ctypes, os, sys, threading
sys.path.insert(0, sys.argv[1])
from ee_jax.runtime import host_memory
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


# Started (and, where it restarts, started again): prints its PID and GLIBC_TUNABLES, then
# maps a block with malloc and prints the kernel's flags of the mapping that holds it.
RESTART_PROGRAM = """
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
from ee_jax.runtime import host_memory
host_memory.restart_with_huge_pages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
p = libc.malloc(int(sys.argv[2]))
ctypes.memset(p, 1, int(sys.argv[2]))
flags, inside = [], False
with open("/proc/self/smaps") as f:
  for line in f:
    first = line.split()[0]
    if "-" in first and ":" not in first:   # a mapping's header: start-end perms ...
      lo, hi = (int(x, 16) for x in first.split("-"))
      inside = lo <= p < hi
    elif inside and first == "VmFlags:":
      flags = line.split()[1:]
print("flags", *flags)
"""


def _restart(tmp_path, tuning: str) -> tuple[list, list]:
  script = tmp_path / "restarts.py"
  script.write_text(RESTART_PROGRAM)
  env = dict(os.environ, EE_JAX_MALLOC_TUNING=tuning)
  env.pop("GLIBC_TUNABLES", None)
  out = subprocess.run([sys.executable, str(script), REPO, str(2 * BLOCK)], env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  lines = [line.split() for line in out.splitlines()]
  return [l[1:] for l in lines if l[0] == "start"], next(l[1:] for l in lines if l[0] == "flags")


@pytest.mark.skipif(host_memory.environ_with_huge_pages({}) is None,
                    reason="needs glibc >= 2.35 and the kernel's THP mode 'madvise'")
def test_restart_puts_mapped_blocks_on_huge_pages(tmp_path):
  starts, flags = _restart(tmp_path, "1")
  # Executed once more, as the same process, with the tunable; no third start.
  assert len(starts) == 2 and starts[0][0] == starts[1][0], starts
  assert starts[0][1:] == [] and starts[1][1:] == [host_memory.HUGE_PAGES], starts
  assert "hg" in flags, flags   # glibc advised the kernel: MADV_HUGEPAGE on the block
  starts, flags = _restart(tmp_path, "0")
  assert len(starts) == 1 and "hg" not in flags, (starts, flags)


def test_restart_only_where_it_changes_something():
  on, new = {}, (2, 36)
  env = host_memory.environ_with_huge_pages(on, "madvise", new)
  assert env["GLIBC_TUNABLES"] == host_memory.HUGE_PAGES
  kept = host_memory.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                             "madvise", new)
  assert kept["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{host_memory.HUGE_PAGES}"
  assert host_memory.environ_with_huge_pages(env, "madvise", new) is None      # restarted
  assert host_memory.environ_with_huge_pages({host_memory.ENV: "0"}, "madvise", new) is None
  assert host_memory.environ_with_huge_pages(on, "madvise", (2, 34)) is None   # no tunable
  for mode in ("always", "never", "unreadable"):
    assert host_memory.environ_with_huge_pages(on, mode, new) is None


def test_gpu_or_tpu_runs_leave_malloc_alone(monkeypatch):
  """Only the CPU backend is tuned: JAX_PLATFORMS naming an accelerator first, or an
  accelerator plugin installed without JAX_PLATFORMS asking for the CPU, changes nothing."""
  new = (2, 36)
  for platforms in ("cuda", "tpu", "gpu,cpu"):
    env = {"JAX_PLATFORMS": platforms}
    assert not host_memory.cpu_backend_expected(env)
    assert host_memory.tune_malloc(env) is False
    assert host_memory.environ_with_huge_pages(env, "madvise", new) is None
  assert host_memory.cpu_backend_expected({"JAX_PLATFORMS": "cpu"})
  plugins = {"jax_cuda12_plugin"}
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name: object() if name in plugins else None)
  assert not host_memory.cpu_backend_expected({})
  assert host_memory.environ_with_huge_pages({}, "madvise", new) is None
  assert host_memory.cpu_backend_expected({"JAX_PLATFORMS": "cpu"})
  plugins.clear()
  assert host_memory.cpu_backend_expected({})
  assert host_memory.environ_with_huge_pages({}, "madvise", new) is not None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(f)) == "madvise"
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None
