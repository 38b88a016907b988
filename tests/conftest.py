"""Test set-up: two fake CPU devices (set before JAX is imported) and shared fixtures."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2").strip()
# On a busy 2-core machine one fake device's thread can be starved past XLA's 40 s
# collective timeout, which aborts the whole test process: be patient instead.
if "xla_cpu_collective_timeout_seconds" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += (" --xla_cpu_collective_call_terminate_timeout_seconds=600"
                              " --xla_cpu_collective_timeout_seconds=600")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The real samples in ../shared/data; skips where a clone has no ../shared."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real samples not found at {SHARED_DATA} (only CI and the dev machines have them)")
  return SHARED_DATA
