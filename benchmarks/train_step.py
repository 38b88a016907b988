"""Pre-training and fine-tuning step throughput: step time, pixels/s, compile time, FLOP/s.

Default model (configs/defaults.py), tiles 64x64x13 (T=1), per-device batch 32, fp32 and
bf16 compute, all local devices (the same `pmap`'d steps as training, state donated, batch
already on device: the input pipeline is measured separately by
benchmarks/input_pipeline.py). FLOPs per step come from the compiled step's own XLA cost
analysis (per device, times the devices); with `--peak_tflops` (per device) the model FLOP
utilisation MFU = achieved / (peak x devices). The count is XLA's (multiply-adds as 2
FLOPs) of the whole step: forward, backward, all-reduce and optimizer update, no
rematerialisation; so it is the hardware FLOP utilisation of this step too. On GPU, XLA's
count leaves out the convolutions (cuDNN calls), about 26x too few for the default model:
take GFLOP/step from a CPU run of the same configuration there (docs/scaling.md).
`faults/step` is the process's minor page faults per timed step: memory the kernel mapped
afresh because a freed buffer was not reused (ee_jax/runtime/host_memory.py).

  python benchmarks/train_step.py                        # the table
  python benchmarks/train_step.py --json                 # JSON on stdout instead
  python benchmarks/train_step.py --tasks pretrain --dtypes bfloat16 --per_device_batch 32,128
  python benchmarks/train_step.py --peak_tflops bfloat16=989,float32=495   # H100 SXM dense
  python benchmarks/train_step.py --per_device_batch 2 --tile 32 --steps 2   # a quick check
  python benchmarks/train_step.py --vs_torch    # + the same step in eager PyTorch, and ratios
  python benchmarks/train_step.py --conv_impl xla  # XLA's own convolutions (before conv.py)

On a CPU the step runs as launch.py runs it: one XLA device per usable core
(`--cpu_devices`, default 0 = one per core that divides every --per_device_batch), the
configured per-device batch shared among them, so `global` is the batch one device would
take; `--cpu_devices 1` times the single device.

`--vs_torch` (needs `pip install '.[torch_peer]'`): after the JAX rows, the pre-training
step of benchmarks/torch_peer.py (same network, InfoNCE, AdamW; NCHW and channels_last) at
the same global batch and tile, each in its own process with as many threads as CPUs, one
run after the other (JAX first, then NCHW, then channels_last, then JAX again, so a
machine that gets busier or quieter shows as a spread between the two JAX figures). The
ratio printed is PyTorch's step time over JAX's: above 1, JAX is faster.
"""

import argparse
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ee_jax.runtime import host_memory  # noqa: E402  (imports nothing from JAX)

if __name__ == "__main__":  # as launch.py: malloc tunables are read at start, so restart first
  host_memory.restart_with_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import defaults  # noqa: E402
from ee_jax import augment, models  # noqa: E402
from ee_jax.runtime import conv_choice, host_devices, parallel  # noqa: E402
from ee_jax.train import finetune, optim  # noqa: E402
from ee_jax.train.pretrain import init_state, make_pretrain_step  # noqa: E402
from ee_jax.train.state import TrainState  # noqa: E402

TASKS = ("pretrain", "finetune")
DTYPES = ("float32", "bfloat16")


def parse_peaks(text: str | None) -> dict:
  """'989' (every dtype) or 'bfloat16=989,float32=495' -> {dtype: TFLOP/s per device}."""
  if not text:
    return {}
  if "=" not in text:
    return {d: float(text) for d in DTYPES}
  peaks = {}
  for part in text.split(","):
    name, value = part.split("=")
    if name.strip() not in DTYPES:
      raise SystemExit(f"--peak_tflops: unknown dtype '{name}'; known: {DTYPES}")
    peaks[name.strip()] = float(value)
  return peaks


def _batch(task, n_dev, b, args, seed=0):
  rng = np.random.default_rng(seed)
  shape = (n_dev * b, args.dates, args.tile, args.tile)
  batch = {
      "image": rng.integers(1, 4000, shape + (args.bands,), dtype=np.uint16),
      "valid": np.ones(shape, bool),
      "index": np.arange(n_dev * b, dtype=np.int64),
  }
  if task == "finetune":
    batch["label"] = rng.integers(0, args.num_classes, (n_dev * b, args.tile, args.tile),
                                  dtype=np.uint8)
  return jax.device_put(parallel.shard(batch, n_dev))


def _step_and_state(task, dtype, args, total_steps=1000, config=None):
  """(per-device step fn, host TrainState) for `task` with the default model in `dtype`, or
  with `config`'s model, objective, views and optimiser (benchmarks/step_profile.py)."""
  c = defaults.get_base_config() if config is None else config.copy_and_resolve_references()
  c.model.dtype = dtype
  c.model.conv_impl = args.conv_impl or c.model.conv_impl
  conv_choice.install()   # 'auto' as launch.py runs it: kernel gradients timed here
  mean, std = np.full(args.bands, 1000.0), np.full(args.bands, 500.0)
  tile = (args.dates, args.tile, args.tile, args.bands)
  key = jax.random.PRNGKey(0)
  if task == "pretrain":
    if config is None:
      c.augment.crop_size = args.tile
    model = models.build_pretrain_model(c.model, c.loss)
    aug = augment.AugmentConfig.from_config(c.augment)
    tx, schedule = optim.make_optimizer(c.optim, total_steps)
    state = init_state(model, tx, key, aug, tile)
    return make_pretrain_step(model, tx, schedule, mean, std, aug, c.loss), state
  if "finetune" not in c:
    defaults.add_finetune(c)
  model = models.build_segmentation_model(c.model, args.num_classes)
  tx, schedule = finetune.make_optimizer(c.optim, c.finetune, total_steps)
  params = models.init_params(model, key, (1,) + tile, with_valid=True)
  step = finetune.make_step(model, tx, schedule, mean, std, args.num_classes,
                            ignore_index=255, dihedral=c.finetune.dihedral)
  return step, TrainState.create(params, tx)


def _flops(compiled) -> float:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends have none
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _step_memory_gb(compiled) -> float | None:
  """Device memory one step needs (per device), from the compiled step's memory analysis:
  this configuration's own figure, unlike the device's process-wide peak."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends have none
    return None
  if m is None:
    return None
  # Arguments + outputs + temporaries, less the outputs that reuse donated arguments (the
  # stats' own `peak_memory_in_bytes` leaves the temporaries out on CPU).
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return round(total / 2 ** 30, 3)


def bench(task, dtype, b, args, peaks) -> dict:
  n_dev = jax.local_device_count()
  fn, state = _step_and_state(task, dtype, args)
  step = parallel.pmap_step(fn, donate_argnums=(0,))
  p_state, keys = parallel.replicate(state), parallel.replicate(jax.random.PRNGKey(1))
  per_xla_device = parallel.device_batch(b)  # b shared by a split CPU's devices
  batch = _batch(task, n_dev, per_xla_device, args)

  t0 = time.perf_counter()
  # Bounded like the step itself (parallel.BoundedDispatch): the host may not run far ahead.
  compiled = parallel.BoundedDispatch(step.lower(p_state, batch, keys).compile())
  compile_s = time.perf_counter() - t0
  flops_per_device = _flops(compiled)
  memory_gb = _step_memory_gb(compiled)

  for _ in range(args.warmup):
    p_state, _ = compiled(p_state, batch, keys)
  jax.block_until_ready(p_state)
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t0 = time.perf_counter()
  for _ in range(args.steps):
    p_state, m = compiled(p_state, batch, keys)
  jax.block_until_ready((p_state, m))
  dt = (time.perf_counter() - t0) / args.steps
  # Pages the kernel had to map afresh (host_memory.py): buffers not reused between steps.
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.steps
  loss = float(np.asarray(jax.device_get(parallel.unreplicate(m))["loss"]))

  tiles = n_dev * per_xla_device
  achieved = flops_per_device * n_dev / dt / 1e12
  peak = peaks.get(dtype)
  return {
      "task": task, "dtype": dtype, "per_device_batch": b, "devices": n_dev,
      "cpu_split": parallel.batch_split(),
      "global_batch": tiles, "tile": [args.dates, args.tile, args.tile, args.bands],
      "params": models.count_params(state.params),
      "compile_s": round(compile_s, 3), "step_ms": round(dt * 1e3, 3),
      "tiles_per_s": round(tiles / dt, 2), "pixels_per_s": round(tiles * args.tile ** 2 / dt, 1),
      "gflop_per_step": round(flops_per_device * n_dev / 1e9, 3),
      "achieved_tflops": round(achieved, 4),
      "peak_tflops_per_device": peak,
      "mfu": None if not peak else round(achieved / (peak * n_dev), 5),
      "step_memory_gb": memory_gb, "page_faults_per_step": round(faults), "loss": loss,
  }


def environment() -> dict:
  d = jax.local_devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind,
          "local_devices": jax.local_device_count(), "cpu_split": parallel.batch_split(),
          "jax": jax.__version__,
          "host": platform.node(), "cpus": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def table(env, rows, skipped=(), skipped_why="") -> str:
  split = (f", one per core sharing each batch/dev (--cpu_devices)"
           if env.get("cpu_split", 1) > 1 else "")
  head = (f"{env['device_kind']} x{env['local_devices']}{split} ({env['backend']}, "
          f"jax {env['jax']}); "
          f"default model, tiles {'x'.join(map(str, rows[0]['tile'][1:]))} T={rows[0]['tile'][0]}"
          if rows else env["device_kind"])
  cols = ["task", "dtype", "batch/dev", "global", "compile s", "step ms", "tiles/s", "Mpx/s",
          "GFLOP/step", "TFLOP/s", "MFU", "GiB/dev", "faults/step"]
  lines = [head, " | ".join(cols), " | ".join("-" * len(c) for c in cols)]
  for r in rows:
    cells = [r["task"], r["dtype"], r["per_device_batch"], r["global_batch"],
             f"{r['compile_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['tiles_per_s']:.1f}",
             f"{r['pixels_per_s'] / 1e6:.2f}", f"{r['gflop_per_step']:.1f}",
             f"{r['achieved_tflops']:.3f}",
             "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
             "n/a" if r["step_memory_gb"] is None else f"{r['step_memory_gb']:.2f}",
             r["page_faults_per_step"]]
    lines.append(" | ".join(str(c) for c in cells))
  if skipped:
    lines.append(f"not run ({skipped_why}): " + ", ".join(skipped))
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: pretrain,finetune")
  p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated compute dtypes")
  p.add_argument("--per_device_batch", default="32", help="one or more, comma-separated")
  p.add_argument("--tile", type=int, default=64)
  p.add_argument("--bands", type=int, default=13)
  p.add_argument("--dates", type=int, default=1)
  p.add_argument("--num_classes", type=int, default=10, help="fine-tuning head")
  p.add_argument("--steps", type=int, default=10, help="timed steps (>= 1)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (>= 0)")
  p.add_argument("--peak_tflops", default=None,
                 help="peak TFLOP/s per device for MFU: one number, or per dtype "
                      "'bfloat16=989,float32=495'")
  p.add_argument("--budget_s", type=float, default=0,
                 help="start no further configuration once this many seconds have passed "
                      "or the last one's time would overrun them (0: no limit); what was "
                      "not run is listed")
  p.add_argument("--conv_impl", default=None, choices=models.conv.CONV_IMPLS,
                 help="config.model.conv_impl (default: the config's, 'auto')")
  p.add_argument("--vs_torch", action="store_true",
                 help="pre-training fp32 only: also time benchmarks/torch_peer.py (NCHW and "
                      "channels_last) at the same batch and tile, and print the ratios")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="on a CPU: XLA devices sharing each configured device's batch, as "
                      "launch.py --cpu_devices (0: one per usable core that divides every "
                      "--per_device_batch; 1: one device)")
  p.add_argument("--json", action="store_true", help="print JSON instead of the table")
  p.add_argument("--json_out", default=None, help="also write the JSON to this file")
  args = p.parse_args()

  tasks = [t for t in args.tasks.split(",") if t]
  dtypes = [d for d in args.dtypes.split(",") if d]
  for t in tasks:
    if t not in TASKS:
      raise SystemExit(f"--tasks: unknown '{t}'; known: {TASKS}")
  for d in dtypes:
    if d not in DTYPES:
      raise SystemExit(f"--dtypes: unknown '{d}'; known: {DTYPES}")
  if args.steps < 1 or args.warmup < 0:
    raise SystemExit("--steps must be >= 1 and --warmup >= 0")
  peaks = parse_peaks(args.peak_tflops)
  batches = [int(b) for b in args.per_device_batch.split(",") if b]
  host_memory.tune_malloc()  # as launch.py does
  try:  # before JAX's CPU client exists, as launch.py does
    host_devices.split_cpu(math.gcd(*batches), args.cpu_devices)
  except ValueError as e:
    raise SystemExit(f"--cpu_devices={args.cpu_devices}: {e}") from None
  env = environment()
  if args.vs_torch:
    b = int(args.per_device_batch.split(",")[0])
    first = bench("pretrain", "float32", b, args, peaks)
    peer = torch_rows(args, first["global_batch"])
    again = bench("pretrain", "float32", b, args, peaks)
    out = _write_json(args.json_out, env, [first, again], [])
    out["torch"] = peer
    print(json.dumps(out, indent=2) if args.json else vs_torch_table([first, again], peer))
    return
  plan = [(task, dtype, int(b)) for b in args.per_device_batch.split(",") if b
          for task in tasks for dtype in dtypes]
  rows, skipped, why = [], [], ""
  start, last = time.monotonic(), 0.0
  # SIGTERM (e.g. `timeout`) ends the run with the table of what was measured so far.
  signal.signal(signal.SIGTERM, _stop)
  try:
    for i, (task, dtype, b) in enumerate(plan):
      elapsed = time.monotonic() - start
      if args.budget_s and elapsed + last > args.budget_s:
        skipped, why = [f"{t} {d} batch {bb}" for t, d, bb in plan[i:]], \
            f"--budget_s {args.budget_s:g} reached"
        break
      t0 = time.monotonic()
      rows.append(bench(task, dtype, b, args, peaks))
      last = time.monotonic() - t0
      print(f"  done: {task} {dtype} batch {b}: {rows[-1]['step_ms']:.1f} ms/step "
            f"({last:.0f} s with compiling)", file=sys.stderr, flush=True)
      _write_json(args.json_out, env, rows, [])
  except _Stopped:
    skipped = [f"{t} {d} batch {bb}" for t, d, bb in plan[len(rows):]]
    why = "stopped by SIGTERM"
  out = _write_json(args.json_out, env, rows, skipped)
  print(json.dumps(out, indent=2) if args.json else table(env, rows, skipped, why))


def torch_rows(args, global_batch: int) -> list[dict]:
  """benchmarks/torch_peer.py at this batch and tile, NCHW then channels_last, each in a
  fresh process (its thread pool must not share the CPUs with JAX's)."""
  rows = []
  for layout in ([], ["--channels_last"]):
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "torch_peer.py"), "--json",
           f"--per_device_batch={global_batch}", f"--tile={args.tile}",
           f"--bands={args.bands}", f"--dates={args.dates}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", *layout]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      raise SystemExit(f"--vs_torch: {out.stderr.strip().splitlines()[-1] if out.stderr else 'torch_peer failed'}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  return rows


def vs_torch_table(jax_rows, peer) -> str:
  """JAX's two runs against PyTorch's NCHW and channels_last: ms/step and ratios."""
  jax_ms = [r["step_ms"] for r in jax_rows]
  mean = sum(jax_ms) / len(jax_ms)
  lines = [f"pre-training step, fp32, global batch {jax_rows[0]['global_batch']}, tile "
           f"{'x'.join(map(str, jax_rows[0]['tile']))}; params JAX {jax_rows[0]['params']:,}"
           f" / torch {peer[0]['params']:,}",
           "framework | ms/step | PyTorch ms / JAX ms", "--- | --- | ---",
           f"JAX (2 runs) | {' / '.join(f'{m:.0f}' for m in jax_ms)} | 1.00"]
  for r in peer:
    name = f"{r['framework']} {'channels_last' if r['channels_last'] else 'NCHW'} ({r['threads']} threads)"
    lines.append(f"{name} | {r['step_ms']:.0f} | {r['step_ms'] / mean:.2f}")
  return "\n".join(lines)


class _Stopped(Exception):
  pass


def _stop(signum, frame):
  del signum, frame
  raise _Stopped()


def _write_json(path, env, rows, skipped) -> dict:
  out = {"environment": env, "results": rows, "not_run": skipped}
  if path:  # after every configuration: a run cut short keeps what it measured
    with open(path, "w") as f:
      json.dump(out, f, indent=2)
  return out


if __name__ == "__main__":
  main()
