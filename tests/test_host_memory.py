"""ee_jax/host_memory.py: with malloc tuned, a program's freed temporaries are reused by
its next call instead of being faulted in afresh."""

import os
import platform
import subprocess
import sys

import pytest

from ee_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted program whose temporaries are 32 MB ([8192, 1024] float32: above every size
# glibc keeps in its heap by default, under the 64 MiB a worker thread's heap can hold),
# called repeatedly; prints the page faults per call once warm.
PROGRAM = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from ee_jax import host_memory
print("tuned", host_memory.tune_malloc())
import jax, jax.numpy as jnp

@jax.jit
def f(x, w):
  h = jnp.tanh(x @ w)
  return (jnp.sort(h, axis=0) @ w.T).sum()

x, w = jnp.ones((8192, 1024)), jnp.full((1024, 1024), 1e-3)
for _ in range(3):
  f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x, w).block_until_ready()
print("faults", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_call(tuning: str) -> float:
  env = dict(os.environ, EE_JAX_MALLOC_TUNING=tuning, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)   # one CPU device, as a plain process
  out = subprocess.run([sys.executable, "-c", PROGRAM, REPO], env=env, capture_output=True,
                       text=True, timeout=600, check=True).stdout.split()
  assert out[:2] == ["tuned", str(tuning == "1")], out
  return float(out[out.index("faults") + 1])


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")
def test_tuned_malloc_reuses_freed_step_buffers():
  untuned = _faults_per_call("0")
  tuned = _faults_per_call("1")
  # Untuned, each call faults in its 32 MB temporaries afresh (8192 pages of 4 KiB each
  # per buffer; seen: 15,600 per call). Tuned, the heap's pages are reused (seen: 55).
  assert untuned >= 4000, untuned
  assert tuned <= untuned / 20, (tuned, untuned)


def test_switch_and_other_c_libraries_leave_malloc_alone(monkeypatch):
  """(Where it applies, the subprocesses above show it applied: 'tuned True'.)"""
  assert host_memory.tune_malloc({host_memory.ENV: "0"}) is False
  assert host_memory.tune_malloc({host_memory.ENV: "off"}) is False
  monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
  assert host_memory.tune_malloc({}) is False
