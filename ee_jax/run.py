"""Modes of launch.py, callable without absl flags (tests call these directly)."""

import inspect
import json
import sys

from ee_jax.data import datasets
from ee_jax.errors import ConfigError, DataError


def build(config, workdir=None) -> None:
  """Builds the dataset the config names (a no-op when it exists) and prints a summary."""
  del workdir
  from ee_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  # --distributed: process 0 builds, the others then open it (no two writers of one folder).
  builder = distributed.primary_first(lambda: datasets.prepare(config.data), "build")
  if distributed.is_primary():
    print(datasets.summary(builder))


def pretrain(config, workdir) -> None:
  """Dense contrastive pre-training (builds the dataset first when it is missing)."""
  if not workdir:
    raise ConfigError("--workdir is required for --mode=pretrain")
  from ee_jax.train.pretrain import pretrain as run_pretrain  # pylint: disable=import-outside-toplevel
  run_pretrain(config, workdir)


def finetune(config, workdir) -> None:
  """Segmentation fine-tuning from a pre-training checkpoint or random init, then eval."""
  if not workdir:
    raise ConfigError("--workdir is required for --mode=finetune")
  from ee_jax.train.finetune import finetune as run_finetune  # pylint: disable=import-outside-toplevel
  run_finetune(config, workdir)


def evaluate(config, workdir) -> None:
  """Evaluates the latest fine-tuning checkpoint of --workdir; writes eval.json."""
  if not workdir:
    raise ConfigError("--workdir is required for --mode=evaluate")
  from ee_jax.train.finetune import evaluate as run_evaluate  # pylint: disable=import-outside-toplevel
  result = run_evaluate(config, workdir)
  from ee_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  keys = ("split", "miou", "oa", "kappa", "per_class_iou")
  distributed.log(json.dumps({k: result[k] for k in keys}, indent=2))


def study(config, workdir) -> None:
  """The label-fraction study (pretrained vs random init); report.md, study.json, plot."""
  if not workdir:
    raise ConfigError("--workdir is required for --mode=study")
  if "study" not in config:
    raise ConfigError("--mode=study needs a study config (e.g. configs/study_synthetic.py)")
  from ee_jax.study import run_study  # pylint: disable=import-outside-toplevel
  run_study(config, workdir)


def predict(config, workdir, scene=None, out=None) -> None:
  """Class map GeoTIFF of a whole scene (--scene, --out) from the fine-tuned --workdir."""
  from ee_jax import inference  # pylint: disable=import-outside-toplevel
  inference.predict_mode(config, workdir, scene=scene, out=out)


def embed(config, workdir, scene=None, out=None, points=None) -> None:
  """Embedding GeoTIFF, PCA preview and k-means map of a whole scene from --workdir; with
  --points, also a table of the embedding at those points."""
  from ee_jax import inference  # pylint: disable=import-outside-toplevel
  inference.embed_mode(config, workdir, scene=scene, out=out, points=points)


MODES = {"build": build, "pretrain": pretrain, "finetune": finetune, "evaluate": evaluate,
         "study": study, "predict": predict, "embed": embed}


def run(mode: str, config, workdir: str | None, **options) -> None:
  """options: flags only some modes take (predict/embed: scene, out; embed: points);
  None = not given."""
  if mode not in MODES:
    raise ConfigError(f"--mode: unknown mode '{mode}'; known: {sorted(MODES)}")
  options = {k: v for k, v in options.items() if v is not None}
  from ee_jax.runtime import conv_choice  # pylint: disable=import-outside-toplevel
  conv_choice.install()   # 'auto' convolutions: the kernel gradient timed faster here
  try:
    unused = sorted(set(options) - set(inspect.signature(MODES[mode]).parameters))
    if unused:
      raise ConfigError(f"--mode={mode} takes no {', '.join('--' + k for k in unused)}")
    MODES[mode](config, workdir, **options)
  except (DataError, ConfigError) as e:
    # One clear message for errors a user can cause, without a traceback.
    sys.exit(f"error: {e}")
