"""The training loop shared by pre-training and fine-tuning.

Runs pmapped steps from `start` to `config.train.steps`, logging to metrics.jsonl, evaluating
every `train.eval_every` steps, checkpointing every `train.checkpoint_every` steps, at the
end and on SIGTERM. The batches of step s are a pure function of (seed, s), so a resumed
run sees exactly what an uninterrupted one would.
"""

import json
import signal
import time
from typing import Callable, Sequence

import jax

from ee_jax import checkpoints, storage
from ee_jax.runtime import distributed, parallel
from ee_jax.data import pipeline
from ee_jax.train import metrics_log


class Preempted(SystemExit):
  """Raised after the SIGTERM checkpoint: the process exits with 143 (128 + SIGTERM) and no
  caller carries on as if the run had finished (a study would otherwise evaluate the
  stopped run and record it as done). A rerun resumes from the saved step."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


class StopFlag:
  """Set by SIGTERM (preemption); the loop saves and returns after the current step.

  In a multi-process run JAX's preemption service owns SIGTERM instead: whichever process
  gets it, every process stops at the same step (`should_stop`), so all of them take part
  in the same final checkpoint.
  """

  def __init__(self):
    self.stop = False
    self._previous = None

  def __enter__(self):
    if distributed.is_multiprocess():
      return self  # a Python handler would replace JAX's preemption notifier
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def should_stop(self, step: int) -> bool:
    """Call at every step (all processes, from the same first step)."""
    if distributed.reached_preemption_sync_point(step):
      self.stop = True
    return self.stop

  def _handle(self, signum, frame):
    del signum, frame
    self.stop = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _flat(tree, prefix=""):
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def say_what_resumes(workdir: str, ckpt, start: int, total: int, config: dict | None) -> None:
  """One line for a resume that is not a plain continuation.

  A changed config continues from the checkpoint (the new values apply from here on; the
  learning-rate schedule is recomputed for the new train.steps); the checkpoint's config is
  kept as config.<step>.json beside the new config.json. train.steps at or below the
  checkpoint's step trains nothing.
  """
  old = ckpt.metadata(start).get("config")
  if config is not None and old is not None:
    before, after = _flat(old), _flat(config)
    changed = [f"{k} {before.get(k, '(none)')} -> {after.get(k, '(none)')}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if changed:
      kept = f"{workdir}/config.{start}.json"
      if jax.process_index() == 0:
        storage.write_text(kept, json.dumps(old, indent=2))
      distributed.log(f"Resuming {workdir} at step {start} with a changed config: "
                      f"{', '.join(changed)} (the checkpoint's config kept as {kept})")
  if total < start:
    distributed.log(f"{workdir}: train.steps={total} is below the latest checkpoint's step "
                    f"{start}: nothing to train (raise train.steps to continue)")
  elif total == start:
    distributed.log(f"{workdir}: already trained to train.steps={total}: nothing to train")


def host_metrics(metrics) -> dict:
  """Replicated device metrics -> {name: float} on host."""
  return {k: float(v) for k, v in jax.device_get(parallel.unreplicate(metrics)).items()}


def run(config, workdir: str, builder, state, *, start: int,
        p_step: Callable, step_keys: Sequence[str], evaluate: Callable | None,
        ckpt: checkpoints.Checkpointer, ckpt_meta: dict, indices=None,
        pixels_per_tile: int = 0, head_steps: int = 0,
        p_head_step: Callable | None = None) -> tuple[dict, object]:
  """Trains from step `start`; returns (last logged metrics, final replicated state).

  p_step(p_state, batch, base_keys) -> (p_state, metrics); evaluate(p_state) -> metrics.
  Steps 1..`head_steps` use `p_head_step` instead, where given (fine-tuning's steps that
  leave the backbone unchanged, compiled without its gradient).
  """
  total = int(config.train.steps)
  log = metrics_log.MetricsLog(workdir, total)
  log.truncate_after(start)
  if start:
    say_what_resumes(workdir, ckpt, start, total, ckpt_meta.get("config"))
  base_keys = parallel.replicate(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  p_state = parallel.replicate(state)
  global_batch = parallel.global_batch(config.data.per_device_batch)
  keys = (*step_keys, "index")
  last, step, stop = {}, start, False
  subset = {} if indices is None else {"indices": indices}
  with StopFlag() as flag, pipeline.train_iterator_from_config(
      config, builder, start_step=start, keys=tuple(step_keys), **subset) as batches:
    t0, since = time.time(), start
    for step in range(start + 1, total + 1):
      batch = next(batches)
      take = p_head_step if p_head_step is not None and step <= head_steps else p_step
      p_state, metrics = take(p_state, {k: batch[k] for k in keys}, base_keys)
      log.advance(step)
      if step % config.train.log_every == 0 or step == total:
        m = host_metrics(metrics)
        m["tiles_per_s"] = (step - since) * global_batch / max(time.time() - t0, 1e-9)
        if pixels_per_tile:
          m["pixels_per_s"] = m["tiles_per_s"] * pixels_per_tile
        last.update(log.write(step, m))
        t0, since = time.time(), step
      if evaluate and config.train.eval_every and (
          step % config.train.eval_every == 0 or step == total):
        last.update(log.write(step, evaluate(p_state), prefix="eval_"))
        t0 = time.time()
      stop = flag.should_stop(step)
      if step % config.train.checkpoint_every == 0 or step == total or stop:
        ckpt.save(step, jax.device_get(parallel.unreplicate(p_state)), ckpt_meta)
      if stop:
        log.say(f"SIGTERM: saved step {step}; rerun the same command to resume",
                every_process=True)
        break
  ckpt.wait()
  log.close()
  distributed.log(f"Checkpoints: {ckpt.directory} (latest step {step}); metrics: {log.path}")
  if stop:
    raise Preempted(step)
  return last, p_state
