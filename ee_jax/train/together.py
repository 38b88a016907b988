"""Fine-tuning several runs together: one compiled step trains all of them.

A study's runs of one label fraction and recipe differ only in their seed (initial head,
augmentation keys, which labelled tiles), their initialisation (pre-trained backbone or
random) and the normalisation that goes with it; the network, optimizer and schedule are
the same. `finetune_together` sets each run up exactly as `finetune` would (its own
workdir, tiles, batches, keys and checkpoints), stacks their states on a run axis and
trains them with one step (ee_jax/train/stacked.py). Every run's workdir ends as that run
alone would leave it (config.json, metrics.jsonl, checkpoints, eval.json), so a run
interrupted with its group resumes alone or in a group, and each run's result equals the
run done alone within float32 rounding (tests/test_together.py).

Runs that cannot share a step (different architecture, steps or optimizer settings,
validation passes or `select_best` inside the run, different resume steps) are trained
one after the other instead; `finetune_together` says so in one line.
"""

import contextlib
import os
import time

import jax
import numpy as np

from ee_jax.runtime import distributed, parallel
from ee_jax.data import pipeline
from ee_jax.train import finetune as finetune_lib
from ee_jax.train import finetune_step, loop, metrics_log, stacked

# Settings in which runs of one group may differ: everything else must be equal.
PER_RUN = ("seed", "finetune.fraction_seed", "finetune.label_fraction", "init.checkpoint",
           "init.allow_stats_mismatch")


def _flat(config) -> dict:
  return loop._flat(config.to_dict())  # pylint: disable=protected-access


def why_not_together(configs) -> str | None:
  """Why these run configs cannot train as one step (None: they can)."""
  first = _flat(configs[0])
  for c in configs:
    if c.train.eval_every or c.finetune.select_best:
      return "validation passes inside a run (train.eval_every, finetune.select_best)"
    other = _flat(c)
    differ = sorted(k for k in set(first) | set(other)
                    if k not in PER_RUN and first.get(k) != other.get(k))
    if differ:
      return f"the runs differ in {', '.join(differ[:3])}"
  return None


def finetune_together(configs, workdirs, vmap_width: int = 0) -> list[dict]:
  """Fine-tunes every (config, workdir) and evaluates each on its test split (eval.json);
  as one program where they can share it (module doc). `vmap_width`: see
  stacked.over_runs (0 = every run vectorised at once)."""
  why = why_not_together(configs) if len(configs) > 1 else "a single run"
  runs = []
  if why is None:
    runs = [finetune_lib.prepare_run(c, w) for c, w in zip(configs, workdirs)]
    why = _why_not_prepared(runs)
    if why is not None:
      for run in runs:
        run.ckpt.close()
  if why is not None:
    if len(configs) > 1:
      distributed.log(f"Fine-tuning {len(configs)} runs one after the other: {why}")
    return [finetune_lib.finetune(c, w) for c, w in zip(configs, workdirs)]

  width = int(vmap_width)
  how = ("all vectorised" if width == 0 or width >= len(runs)
         else f"{width} vectorised at a time")
  distributed.log(f"Fine-tuning {len(runs)} runs together as one step ({how}): "
                  + ", ".join(os.path.basename(r.workdir) for r in runs))
  lasts = _train(runs, width)
  for run in runs:
    run.ckpt.close()
  return [{**last, **finetune_lib.write_test_result(run.config, run.workdir, run.workdir)}
          for run, last in zip(runs, lasts)]


def _why_not_prepared(runs) -> str | None:
  first = runs[0]
  for run in runs[1:]:
    if run.start != first.start:
      return (f"their checkpoints are at different steps ({first.start} in {first.workdir}, "
              f"{run.start} in {run.workdir})")
    if run.model_cfg.to_dict() != first.model_cfg.to_dict():
      return f"{run.workdir} and {first.workdir} have different models"
    if run.mean.shape != first.mean.shape:
      return f"{run.workdir} and {first.workdir} normalise different bands"
  return None


def _train(runs, width: int) -> list[dict]:
  """loop.run for stacked runs: every run logs, checkpoints and stops as it would alone."""
  first = runs[0]
  config = first.config

  def compiled_step(head_only: bool):
    step = finetune_step.make_normalising_step(
        first.model, first.tx, first.schedule, first.num_classes, first.ignore_index,
        first.class_weights, config.finetune.dihedral, head_only=head_only)
    return parallel.pmap_step(stacked.over_runs(step, width), donate_argnums=(0,))

  start, total = first.start, int(config.train.steps)
  head_steps = finetune_step.head_only_steps(config.finetune, total)
  p_head_step = compiled_step(True) if head_steps > start else None
  p_step = compiled_step(False)
  devnull = open(os.devnull, "w")  # pylint: disable=consider-using-with
  logs = [metrics_log.MetricsLog(r.workdir, total, stream=devnull) for r in runs]
  for run, log in zip(runs, logs):
    log.truncate_after(start)
    if start:
      loop.say_what_resumes(run.workdir, run.ckpt, start, total, run.ckpt_meta.get("config"))
  replicate = lambda x: parallel.replicate(stacked.stack(x))  # noqa: E731
  base_keys = replicate([jax.random.fold_in(jax.random.PRNGKey(r.config.seed), 1)
                         for r in runs])
  means = replicate([r.mean.astype(np.float32) for r in runs])
  stds = replicate([r.std.astype(np.float32) for r in runs])
  p_state = replicate([r.state for r in runs])
  global_batch = parallel.global_batch(config.data.per_device_batch)
  keys = (*finetune_lib.STEP_KEYS, "index")
  lasts = [{} for _ in runs]
  step_no, stop = start, False
  with loop.StopFlag() as flag, contextlib.ExitStack() as iterators:
    streams = [iterators.enter_context(pipeline.train_iterator_from_config(
        r.config, r.builder, start_step=start, keys=finetune_lib.STEP_KEYS,
        **({} if r.indices is None else {"indices": r.indices}))) for r in runs]
    t0, since = time.time(), start
    for step_no in range(start + 1, total + 1):
      batches = [next(s) for s in streams]
      batch = {k: np.stack([b[k] for b in batches], axis=1) for k in keys}
      take = p_head_step if p_head_step is not None and step_no <= head_steps else p_step
      p_state, metrics = take(p_state, batch, base_keys, means, stds)
      if step_no % config.train.log_every == 0 or step_no == total:
        per_run = jax.device_get(parallel.unreplicate(metrics))
        tiles_per_s = (step_no - since) * global_batch / max(time.time() - t0, 1e-9)
        for i, log in enumerate(logs):
          m = {k: float(v[i]) for k, v in per_run.items()}
          m["tiles_per_s"] = tiles_per_s / len(runs)   # each run's share of the step
          m["pixels_per_s"] = m["tiles_per_s"] * first.ckpt_meta["tile_size"] ** 2
          lasts[i].update(log.write(step_no, m))
        losses = " ".join(f"{float(v):.4g}" for v in per_run["loss"])
        distributed.log(f"step {step_no}/{total} loss={losses} "
                        f"tiles_per_s={tiles_per_s:.4g} ({len(runs)} runs)")
        t0, since = time.time(), step_no
      stop = flag.should_stop(step_no)
      if step_no % config.train.checkpoint_every == 0 or step_no == total or stop:
        host = jax.device_get(parallel.unreplicate(p_state))
        for i, run in enumerate(runs):
          run.ckpt.save(step_no, stacked.unstack(host, i), run.ckpt_meta)
      if stop:
        print(f"SIGTERM: saved step {step_no} of {len(runs)} runs; rerun the same command "
              f"to resume", flush=True)   # a fact about each host: every process says it
        break
  for run, log in zip(runs, logs):
    run.ckpt.wait()
    log.close()
  devnull.close()
  if stop:
    raise loop.Preempted(step_no)
  return lasts
