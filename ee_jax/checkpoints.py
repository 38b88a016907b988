"""orbax checkpoints under <workdir>/checkpoints: train state plus JSON metadata.

The metadata (config, band names, normalisation statistics, model config, code version)
travels with every checkpoint, so fine-tuning and inference can refuse a dataset or scene
the model was not trained for. orbax writes each step into a temporary folder and renames
it when complete, so a save cut short by a kill is never restored. No pickle anywhere.
"""

import os
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

import ee_jax
from ee_jax.errors import DataError


def code_version() -> str:
  """Package version plus the git commit when running from a checkout."""
  head = epath.Path(__file__).parent.parent / ".git" / "HEAD"
  commit = ""
  try:
    ref = head.read_text().strip()
    if ref.startswith("ref: "):
      ref = (head.parent / ref[5:]).read_text().strip()
    commit = "+" + ref[:12]
  except OSError:
    pass
  return ee_jax.__version__ + commit


class Checkpointer:
  """Periodic, final and on-demand (SIGTERM) saves; restore of the latest complete step."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = epath.Path(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(
        os.fspath(self.directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, metadata: dict, wait: bool = False) -> None:
    """`state` is a host (unreplicated) pytree; saving is asynchronous unless `wait`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)), force=True)
    if wait:
      self._manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores into the structure (and dtypes) of `target`; returns (state, metadata)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise DataError(f"{self.directory}: no complete checkpoint to restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    self._check_structure(step, abstract)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def _check_structure(self, step: int, abstract: Any) -> None:
    """One line naming what differs when the config's model is not the checkpoint's."""
    saved = ocp.StandardCheckpointer().metadata(
        os.fspath(self.directory / str(step) / "state")).item_metadata.tree
    have, want = _shapes(saved), _shapes(abstract)
    diffs = [(k, f"{k}: checkpoint {have[k]} vs config {want[k]}")
             for k in set(have) & set(want) if have[k] != want[k]]
    diffs += [(k, f"{k} only in the checkpoint") for k in set(have) - set(want)]
    diffs += [(k, f"{k} only in the config") for k in set(want) - set(have)]
    # Params first: the optimiser state differs wherever they do.
    diffs = [text for k, text in sorted(diffs, key=lambda d: (not d[0].startswith("params"),
                                                              d[0]))]
    if diffs:
      more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
      raise DataError(f"{self.directory.parent}: the config's model differs from the "
                      f"checkpoint at step {step}: {'; '.join(diffs[:3])}{more}; use the "
                      f"config the run was started with, or another --workdir")

  def metadata(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise DataError(f"{self.directory}: no complete checkpoint")
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _shapes(tree) -> dict:
  """{'params.backbone.enc0.Conv_0.kernel': shape} of a pytree of arrays or array metadata."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {".".join(name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


def check_bands(checkpoint_meta: dict, dataset_meta: dict, checkpoint_dir: str,
                dataset_dir: str) -> None:
  """A model trained on one band list must not silently read another."""
  ckpt_bands = list(checkpoint_meta.get("bands", []))
  data_bands = list(dataset_meta.get("bands", []))
  if ckpt_bands != data_bands:
    raise DataError(f"band list mismatch: checkpoint {checkpoint_dir} was trained on "
                    f"{ckpt_bands}, dataset {dataset_dir} has {data_bands}")


def resolve_checkpoint(path: str) -> tuple[epath.Path, int]:
  """A workdir, its checkpoints/ folder, or one step folder -> (checkpoints dir, step)."""
  path = os.path.expanduser(os.fspath(path))
  if "://" not in path:  # local: absolute, as orbax refuses relative paths (--workdir=runs/x)
    path = os.path.abspath(path)
  p = epath.Path(path)
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  if p.name.isdigit() and (p / "state").is_dir():
    return p.parent, int(p.name)
  if not p.is_dir():
    raise DataError(f"{path}: no such checkpoint, checkpoints folder or workdir")
  steps = sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / "state").is_dir())
  if not steps:
    raise DataError(f"{path}: holds no complete checkpoint")
  return p, steps[-1]


def load_params(path: str) -> tuple[Any, dict]:
  """(params, metadata) of the latest complete checkpoint under `path` (workdir, its
  checkpoints/ folder, or one step folder), without needing the train state's structure."""
  directory, step = resolve_checkpoint(path)
  manager = ocp.CheckpointManager(os.fspath(directory))
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    manager.close()
  state = ocp.StandardCheckpointer().restore(directory / str(step) / "state")
  return state["params"], meta
