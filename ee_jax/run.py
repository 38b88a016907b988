"""Modes of launch.py, callable without absl flags (tests call these directly)."""

import sys

from ee_jax.data import datasets
from ee_jax.errors import ConfigError, DataError


def build(config, workdir=None) -> None:
  """Builds the dataset the config names (a no-op when it exists) and prints a summary."""
  del workdir
  builder = datasets.prepare(config.data)
  print(datasets.summary(builder))


MODES = {"build": build}


def run(mode: str, config, workdir: str | None) -> None:
  if mode not in MODES:
    raise ConfigError(f"--mode: unknown mode '{mode}'; known: {sorted(MODES)}")
  try:
    MODES[mode](config, workdir)
  except (DataError, ConfigError) as e:
    # One clear message for errors a user can cause, without a traceback.
    sys.exit(f"error: {e}")
