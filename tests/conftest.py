"""Test set-up: two fake CPU devices (set before JAX is imported) and shared fixtures."""

import os
import pathlib

from ee_jax.runtime import host_devices  # noqa: E402  (imports no JAX)

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Two fake devices, and a thread per device at least in XLA's client pool: with the bounded
# dispatch of parallel.pmap_step, a collective step always finds one (ee_jax/runtime/host_devices.py).
host_devices.configure(2)
# A collective that still waits this long is a real deadlock: fail within minutes (XLA's
# own limit is 40 s, short for a starved process on a loaded 2-core machine).
if "xla_cpu_collective_timeout_seconds" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += (" --xla_cpu_collective_call_terminate_timeout_seconds=120"
                              " --xla_cpu_collective_timeout_seconds=120")

import pytest  # noqa: E402

from tests.helpers import SHARED_DATA  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each test module's compiled programs are freed when it ends: a process that keeps
  every program of the whole suite passes Linux's 65,530 memory mappings and aborts inside
  XLA's next compile (ee_jax/persistent_cache.release_compiled_programs)."""
  yield
  from ee_jax.runtime import persistent_cache  # pylint: disable=import-outside-toplevel
  persistent_cache.release_compiled_programs()


@pytest.fixture(autouse=True)
def _no_steps_shared_between_tests():
  """Each test builds its own steps (ee_jax/runtime/shared_steps.py keeps them per process)."""
  yield
  from ee_jax.runtime import shared_steps  # pylint: disable=import-outside-toplevel
  shared_steps.clear()


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The real samples in ../shared/data; skips where a clone has no ../shared."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real samples not found at {SHARED_DATA} (only CI and the dev machines have them)")
  return SHARED_DATA


# ------------------------------------------------------------------ fine-tuning and the study

@pytest.fixture(scope="session")
def labelled_data_dir(tmp_path_factory):
  """Where the tiny labelled dataset (tests/helpers.py) is built, once a session."""
  return tmp_path_factory.mktemp("tfds_labelled")


@pytest.fixture(scope="session")
def pretrained(labelled_data_dir, tmp_path_factory):
  """A workdir with a few steps of pre-training on the tiny labelled dataset."""
  from ee_jax.train.pretrain import pretrain  # pylint: disable=import-outside-toplevel
  from tests.helpers import tiny_labelled_pretrain_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  pretrain(tiny_labelled_pretrain_config(labelled_data_dir), workdir)
  return workdir
