"""Segmentation evaluation: confusion matrix over a split -> eval.json.

Every example of the split counts exactly once on any number of devices and processes:
the eval iterator pads the last global batch and marks padding with `mask`, and the
per-device confusion matrices are summed across devices inside the step.
"""

import json
import os

import jax
import ml_collections
import numpy as np

from ee_jax import checkpoints, metrics, models
from ee_jax.runtime import distributed, parallel
from ee_jax.data import contract, datasets, pipeline
from ee_jax.errors import DataError
from ee_jax.train import finetune_step
from ee_jax.runtime import shared_steps

EVAL_KEYS = (contract.IMAGE, contract.VALID, contract.LABEL)


def confusion_over_split(p_eval, p_params, config, builder, split: str,
                         **pipeline_overrides) -> np.ndarray:
  """Sum of the (device-summed) confusion matrices over every batch of `split`."""
  total = None
  with pipeline.eval_iterator_from_config(config, builder, split=split, keys=EVAL_KEYS,
                                          **pipeline_overrides) as it:
    for batch in it:
      cm = p_eval(p_params, {k: batch[k] for k in (*EVAL_KEYS, "mask")})
      cm = np.asarray(jax.device_get(parallel.unreplicate(cm)), np.int64)
      total = cm if total is None else total + cm
  return total


def make_evaluator(meta: dict, num_classes: int, ignore_index: int):
  """A pmapped eval step for the model and normalisation stored in `meta` (a fine-tuning
  checkpoint's metadata); the one built earlier in this process for equal ones, if any."""
  def build():
    model = models.build_segmentation_model(ml_collections.ConfigDict(meta["model"]),
                                           num_classes)
    mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
    return parallel.pmap_step(finetune_step.make_eval_step(model, mean, std, num_classes,
                                                           ignore_index))

  return shared_steps.reuse("segmentation_eval", {
      "model": meta["model"], "mean": meta["mean"], "std": meta["std"],
      "num_classes": num_classes, "ignore_index": ignore_index}, build)


def scores_for(p_eval, p_params, config, builder, split, class_names) -> dict:
  cm = confusion_over_split(p_eval, p_params, config, builder, split)
  return metrics.segmentation_scores(cm, class_names)


def evaluate(config, workdir: str, split: str | None = None,
             filename: str = "eval.json", checkpoint: str | None = None) -> dict:
  """Evaluates the latest checkpoint in `workdir` (or in `checkpoint`, e.g. the run's
  best-on-validation params) on `split` (default config.finetune.test_split); writes and
  returns <workdir>/<filename>."""
  checkpoint = checkpoint or workdir
  params, meta = checkpoints.load_params(checkpoint)
  if meta.get("kind") != "finetune":
    raise DataError(f"{checkpoint}: holds a '{meta.get('kind')}' checkpoint; evaluation needs a "
                    f"fine-tuned segmentation model (--mode=finetune)")
  builder = distributed.primary_first(
      lambda: datasets.prepare(config.data, log=lambda *a: None), "prepare")
  checkpoints.check_bands(meta, builder.info.metadata, checkpoint, os.fspath(builder.data_dir))
  split = split or config.finetune.test_split
  class_names = list(meta["class_names"])
  p_eval = make_evaluator(meta, len(class_names), meta["ignore_index"])
  result = scores_for(p_eval, parallel.replicate(params), config, builder, split, class_names)
  result.update(split=split, checkpoint_step=checkpoints.resolve_checkpoint(checkpoint)[1],
                num_examples=builder.info.splits[split].num_examples)
  if checkpoint != workdir:
    result["checkpoint"] = checkpoint
  if "best_step" in meta:  # params chosen on validation (ee_jax/train/finetune_best.py)
    result["selected_on"] = {"split": meta["best_split"], "step": meta["best_step"],
                             "miou": meta["best_miou"]}
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, filename + ".tmp")
    with open(tmp, "w") as f:
      json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(workdir, filename))  # never a half-written result
  distributed.barrier(f"ee_jax:{filename}")  # all processes may read it once we return
  return result
