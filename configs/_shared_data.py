"""The real samples in ../shared/data (relative to the repo root) and the `FOLDER` argument
of the configs that read them (configs/study_eolearn.py, study_sen1floods11.py,
pretrain_real.py)."""

import os

from ee_jax.geo.bands import S2_L2A_BANDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))

# The bands every real source has: the 13 L1C bands less B10 (cirrus, top of atmosphere
# only; L2A products drop it). The study configs read these too, so that a pre-training on
# other regions (configs/pretrain_real.py) can initialise them.
COMMON_BANDS = tuple(S2_L2A_BANDS)


def folder_and_smoke(arg: str | None, path: str, default: str, words: str) -> tuple[str, bool]:
  """`path:arg` with arg '', 'smoke', 'FOLDER' or 'FOLDER,smoke' -> (folder, smoke).

  Without a folder: `default` (under ../shared/data), which may be absent: the config still
  loads and the build names the missing file. A folder given that does not exist is one
  error line."""
  parts = [p for p in (arg or "").split(",") if p]
  smoke = "smoke" in parts
  folders = [p for p in parts if p != "smoke"]
  if len(folders) > 1:
    raise ValueError(f"{path}: unknown argument '{arg}' (known: smoke, {words}, or "
                     f"'FOLDER,smoke'): one folder at most")
  if folders and not os.path.isdir(os.path.expanduser(folders[0])):
    raise ValueError(f"{path}: unknown argument '{arg}' (known: smoke, {words}, or "
                     f"'FOLDER,smoke'): no folder {folders[0]}")
  folder = os.path.abspath(os.path.expanduser(folders[0])) if folders else default
  return folder, smoke


def short_runs(c):
  """A small labelled set's fine-tuning: 300 steps (synthetic_landcover's), not
  finetune_landcover's 2000; longer runs on these sets are not measured
  (docs/pretraining.md, section 7b)."""
  c.train.steps = 300
  c.train.log_every = 20
  c.optim.warmup_steps = 20
  return c
