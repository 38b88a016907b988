"""The persistent compilation cache of launch.py commands: where it lives, that it can be
switched off, and that a second closure of the same program (a study's next seed) and a
second process (a repeated command) load the executable instead of compiling it."""

import json
import os
import subprocess
import sys

import pytest

from ee_jax.runtime import persistent_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two fresh closures of one program, as a study builds one step per run; prints how many
# compilations missed and hit the persistent cache.
_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from ee_jax.runtime import persistent_cache
print(json.dumps({"dir": persistent_cache.enable()}))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny programs too
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
def make_step(scale):
  return jax.jit(lambda x: jnp.tanh(x @ x.T) * scale)
for _ in range(2):
  make_step(3.0)(jnp.ones((32, 32))).block_until_ready()
count = lambda what: sum(e.endswith("/compilation_cache/" + what) for e in events)
print(json.dumps({"misses": count("cache_misses"), "hits": count("cache_hits")}))
"""


def _run(env):
  out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout.splitlines()
  return json.loads(out[0])["dir"], json.loads(out[-1])


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(persistent_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert persistent_cache.cache_dir() == str(tmp_path / "ee_jax" / "xla")
  monkeypatch.setenv(persistent_cache.ENV, str(tmp_path / "mine"))
  assert persistent_cache.cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(persistent_cache.ENV, "off")
  assert persistent_cache.cache_dir() is None


def test_same_program_compiles_once_across_closures_and_processes(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, **{persistent_cache.ENV: str(tmp_path / "cache")})
  where, first = _run(env)
  assert where == str(tmp_path / "cache")
  # The first closure misses and writes the entry, the second closure loads it.
  assert first["misses"] >= 1 and first["hits"] >= 1, first
  assert os.listdir(tmp_path / "cache")
  _, second = _run(env)
  assert second["misses"] == 0 and second["hits"] >= 2, second   # a repeated command


def test_switched_off_writes_nothing(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path),
             **{persistent_cache.ENV: "off"})
  where, counts = _run(env)
  assert where is None and counts["hits"] == 0
  assert not (tmp_path / "ee_jax").exists()


# Six fresh closures (one pmapped program each, as a study's runs build them), then a release.
_MAPS_SCRIPT = """
import gc, json
import jax, jax.numpy as jnp
from ee_jax.runtime import persistent_cache
maps = lambda: sum(1 for _ in open("/proc/self/maps"))
jnp.ones(1).block_until_ready()
before = maps()
def loss(x, c):
  y = jnp.tanh(x @ x.T + c)
  z = jnp.sin(y).sum(0) * jnp.cos(y).mean(1)
  return (jnp.exp(z) / (1 + z * z)).sum()
for i in range(6):
  step = jax.pmap(jax.grad(lambda x, c=float(i): loss(x, c)))   # as the training steps
  step(jnp.ones((jax.local_device_count(), 64, 64))).block_until_ready()
  del step
gc.collect()
held = maps()
persistent_cache.release_compiled_programs()
print(json.dumps({"before": before, "held": held, "released": maps()}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts Linux memory maps")
def test_released_programs_give_back_their_memory_mappings():
  """JAX keeps dead closures' executables (each in several code mappings) until released:
  without the release a long study climbs to the 65,530-mapping limit."""
  env = dict(os.environ, PYTHONPATH=REPO, **{persistent_cache.ENV: "off"})
  out = subprocess.run([sys.executable, "-c", _MAPS_SCRIPT], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout.splitlines()
  n = json.loads(out[-1])
  grown = n["held"] - n["before"]
  assert grown >= 6, n   # at least one mapping per executable that is still held
  assert n["released"] - n["before"] < grown / 2, n


def test_release_if_crowded_keeps_shared_steps_until_mappings_get_many(monkeypatch):
  from ee_jax.runtime import shared_steps  # pylint: disable=import-outside-toplevel
  kept = shared_steps.reuse("probe", {"a": 1}, lambda: object())
  monkeypatch.setattr(persistent_cache, "memory_mappings", lambda: (2000, 65530))
  assert not persistent_cache.release_if_crowded()
  assert shared_steps.reuse("probe", {"a": 1}, lambda: object()) is kept
  monkeypatch.setattr(persistent_cache, "memory_mappings", lambda: (20000, 65530))
  assert persistent_cache.release_if_crowded()
  assert shared_steps.reuse("probe", {"a": 1}, lambda: object()) is not kept
  kept = shared_steps.reuse("probe", {"a": 1}, lambda: object())
  monkeypatch.setattr(persistent_cache, "memory_mappings", lambda: None)   # not Linux: as before
  assert persistent_cache.release_if_crowded()
  assert shared_steps.reuse("probe", {"a": 1}, lambda: object()) is not kept
  shared_steps.clear()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux memory maps")
def test_memory_mappings_counts_this_process():
  held, limit = persistent_cache.memory_mappings()
  with open("/proc/self/maps") as f:
    assert abs(held - sum(1 for _ in f)) < 50 and limit >= 1024
