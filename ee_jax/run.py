"""Modes of launch.py, callable without absl flags (tests call these directly)."""

import sys

from ee_jax.data import datasets
from ee_jax.errors import ConfigError, DataError


def build(config, workdir=None) -> None:
  """Builds the dataset the config names (a no-op when it exists) and prints a summary."""
  del workdir
  builder = datasets.prepare(config.data)
  print(datasets.summary(builder))


def pretrain(config, workdir) -> None:
  """Dense contrastive pre-training (builds the dataset first when it is missing)."""
  if not workdir:
    raise ConfigError("--workdir is required for --mode=pretrain")
  from ee_jax.train.pretrain import pretrain as run_pretrain  # pylint: disable=import-outside-toplevel
  run_pretrain(config, workdir)


MODES = {"build": build, "pretrain": pretrain}


def run(mode: str, config, workdir: str | None) -> None:
  if mode not in MODES:
    raise ConfigError(f"--mode: unknown mode '{mode}'; known: {sorted(MODES)}")
  try:
    MODES[mode](config, workdir)
  except (DataError, ConfigError) as e:
    # One clear message for errors a user can cause, without a traceback.
    sys.exit(f"error: {e}")
