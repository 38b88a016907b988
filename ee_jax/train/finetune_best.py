"""The best-on-validation params of a fine-tuning run (`config.finetune.select_best`).

With scarce labels a fine-tuning overfits within a few hundred steps, so the last step is
not the one to report. Every validation pass offers its params; the best mIoU so far is
kept as its own orbax checkpoint under <workdir>/best (one step, replaced only once the
better one is complete), with its step and mIoU in the checkpoint's metadata and in
<workdir>/best/best.json. A resumed run reads the best so far back from there.
"""

import json
import os

import jax

from ee_jax import checkpoints

BEST = "best"


def best_dir(workdir: str) -> str:
  return os.path.join(workdir, BEST)


def params_source(workdir: str) -> str:
  """Where a run's reported params are: its best-on-validation ones if kept, else its own."""
  directory = best_dir(workdir)
  return directory if os.path.isdir(os.path.join(directory, "checkpoints")) else workdir


class BestKeeper:
  """Keeps the params with the highest validation mIoU (the first among equals)."""

  def __init__(self, workdir: str, meta: dict, split: str):
    self.directory = best_dir(workdir)
    self._meta, self._split = meta, split
    self._ckpt = checkpoints.Checkpointer(self.directory, max_to_keep=1)
    self.step, self.miou = None, None
    if self._ckpt.latest_step() is not None:
      kept = self._ckpt.metadata()
      self.step, self.miou = int(kept["best_step"]), float(kept["best_miou"])

  def offer(self, step: int, miou, params) -> bool:
    """Keeps host `params` of `step` if `miou` beats the best so far; True if kept.
    Every process calls it (an orbax save is collective)."""
    if miou is None or (self.miou is not None and miou <= self.miou):
      return False
    record = {"best_step": int(step), "best_miou": float(miou), "best_split": self._split}
    self._ckpt.save(step, {"params": params}, {**self._meta, **record}, wait=True)
    self.step, self.miou = int(step), float(miou)
    if jax.process_index() == 0:
      path = os.path.join(self.directory, "best.json")
      with open(path + ".tmp", "w") as f:
        json.dump({"step": self.step, "miou": self.miou, "split": self._split}, f, indent=2)
      os.replace(path + ".tmp", path)
    return True

  def close(self) -> None:
    self._ckpt.close()
