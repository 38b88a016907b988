"""Where a training step spends its time: device time per layer and per kind of operation.

Runs the step of benchmarks/train_step.py (same model, shapes and flags, the same pmapped
program, CPU devices split as launch.py splits them), records a few steps with the JAX
profiler and charges every operation the trace shows to the HLO instruction it ran. Each
instruction's `op_name` (what JAX traced it from: `jvp(...)` the forward, `transpose(jvp
(...))` the backward, then the module path, e.g. `backbone/enc0/Conv_0`) names the layer;
instructions XLA made itself and left unnamed (a convolution's kernel gradient, layout
copies) are named by their root operation and shape. Two tables, in ms per device and step
(the sum over devices and steps, divided by both):
- by kind: convolutions and products, collectives (all-reduce, including the time a device
  waits there for the others), layout copies and transposes, random numbers, the rest;
- by layer (`--top` rows): forward and backward apart.

  python benchmarks/step_profile.py --task pretrain --tile 24 --per_device_batch 16
  python benchmarks/step_profile.py --task finetune --tile 32 --dates 6 --per_device_batch 16
  python benchmarks/step_profile.py --task pretrain --keep_trace /tmp/trace   # for Perfetto
  python benchmarks/step_profile.py --config configs/pretrain_synthetic.py --tile 32 --dates 6
  python benchmarks/step_profile.py --task finetune --config configs/finetune_synthetic.py \
      --tile 32 --dates 6 --num_classes 6

Without `--config` the model, objective and optimiser are configs/defaults.py's (InfoNCE,
views cropped to the whole tile), as in train_step.py; with it, that config's (its model,
objectives, views, optimiser and per-device batch), on tiles of `--dates x --tile x --tile x
--bands`.

For CPU devices (an XLA CPU trace names its operations after the HLO instructions). Device
time is wall time on the thread that ran the operation, so an operation slowed by the other
device's work on a shared core, or a collective waiting for a slower device, shows as
longer: the tables say where the step's time goes, not what an operation costs alone.
Recording slows the step (printed: the step's time untraced, then traced; 1.5-3x on a
2-core VM), and the operations with it: read the shares, and time a change untraced.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
import typing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ee_jax.runtime import host_memory  # noqa: E402  (imports nothing from JAX)
from ee_jax.errors import ConfigError  # noqa: E402

if __name__ == "__main__":  # as launch.py: malloc tunables are read at start, so restart first
  host_memory.restart_with_huge_pages()

KINDS = ("convolution or product", "collective", "layout copy or transpose",
         "random numbers", "other")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_LAYOUT = re.compile(r"\{[^}]*\}")
PRODUCTS = ("convolution", "dot")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class Instruction(typing.NamedTuple):
  op_name: str        # what JAX traced it from ('' where XLA left it unnamed)
  description: str    # opcode and shape; a fusion's: its root's (what it computes)
  has_product: bool   # a convolution or dot, itself or inside its fused computation


def parse_hlo(text: str) -> dict:
  """{instruction name: Instruction} for the instructions of an HLO module's entry
  computation (`compiled.as_text()`): what a CPU trace shows as operations (a loop's body
  runs inside its `while`, so counting both would count it twice). An instruction without
  an op_name of its own takes its fused computation's root's."""
  entries, roots, products, entry = {}, {}, set(), set()
  computation, is_entry = None, False
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      is_entry, computation = head.groups()
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    is_root, name, shape, opcode, rest = m.groups()
    op_name = _OP_NAME.search(rest)
    calls = _CALLS.search(rest)
    entries[name] = (op_name.group(1) if op_name else "",
                     f"{opcode} {_LAYOUT.sub('', shape)}", calls.group(1) if calls else None,
                     opcode in PRODUCTS)
    if is_entry:
      entry.add(name)
    if computation is not None:
      if is_root:
        roots[computation] = name
      if opcode in PRODUCTS:
        products.add(computation)
  out = {}
  for name in entry:
    op_name, description, calls, has_product = entries[name]
    seen = set()
    while calls is not None and calls in roots and calls not in seen:  # nested fusions
      seen.add(calls)
      has_product = has_product or calls in products
      root_op, description, calls, root_product = entries[roots[calls]]
      op_name, has_product = op_name or root_op, has_product or root_product
    out[name] = Instruction(op_name, description, has_product)
  return out


def kind_of(instruction: Instruction) -> str:
  """One of KINDS."""
  opcode = instruction.description.split(" ", 1)[0]
  if opcode in COLLECTIVES:
    return "collective"
  if instruction.has_product:
    return "convolution or product"
  if re.search(r"random|threefry|_normal|_uniform|_bernoulli", instruction.op_name):
    return "random numbers"
  if opcode in ("copy", "transpose"):
    return "layout copy or transpose"
  return "other"


def layer_of(instruction: Instruction) -> str:
  """'forward backbone/enc0/Conv_0 (primitive)', 'backward ...', or '(unnamed) <root op
  and shape>' for what XLA made itself."""
  op_name, description = instruction.op_name, instruction.description
  if not op_name:
    return f"(unnamed) {description}"
  parts = [p for p in op_name.split("/") if p and p not in ("jit(_fun)", "shard_map")]
  phase = "backward" if "transpose(" in op_name else "forward"
  path = "/".join(p for p in parts[:-1] if "(" not in p) or "outside the model"
  return f"{phase} {path} ({parts[-1]})"


def device_times(events, instructions: dict) -> dict:
  """{instruction name: summed duration in us} over the trace's complete events that ran an
  instruction of the module (the trace's own bookkeeping events are left out)."""
  out = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      out[e["name"]] += float(e.get("dur", 0))
  return out


def tables(times: dict, instructions: dict, per: float, top: int) -> str:
  """The two tables (ms per device-step: each duration in us divided by `per` x 1000)."""
  by_kind, by_layer = collections.Counter(), collections.Counter()
  for name, us in times.items():
    kind = kind_of(instructions[name])
    by_kind[kind] += us
    by_layer[(layer_of(instructions[name]), kind)] += us
  total = sum(by_kind.values()) or 1.0
  lines = ["kind | ms per device-step | share", "--- | --- | ---"]
  lines += [f"{k} | {by_kind[k] / per / 1e3:.2f} | {by_kind[k] / total:.0%}" for k in KINDS]
  lines += [f"all | {total / per / 1e3:.2f} | 100%", "",
            "layer (forward / backward; unnamed: XLA's own) | kind | ms per device-step | share",
            "--- | --- | --- | ---"]
  lines += [f"{layer} | {kind} | {v / per / 1e3:.2f} | {v / total:.1%}"
            for (layer, kind), v in by_layer.most_common(top)]
  return "\n".join(lines)


def read_trace(directory: str) -> list:
  files = glob.glob(os.path.join(directory, "**", "*perfetto_trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"no perfetto trace was written under {directory}")
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="pretrain", choices=("pretrain", "finetune"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--config", default=None, help="configs/<file>.py[:arg] to profile instead "
                 "of the default model and objective")
  p.add_argument("--per_device_batch", type=int, default=None,
                 help="default: the config's, else 32")
  p.add_argument("--tile", type=int, default=64)
  p.add_argument("--bands", type=int, default=13)
  p.add_argument("--dates", type=int, default=1)
  p.add_argument("--num_classes", type=int, default=10, help="fine-tuning head")
  p.add_argument("--steps", type=int, default=5, help="steps recorded (>= 1)")
  p.add_argument("--warmup", type=int, default=3, help="steps run first, unrecorded (>= 0)")
  p.add_argument("--conv_impl", default=None, help="config.model.conv_impl")
  p.add_argument("--cpu_devices", type=int, default=0, help="as train_step.py --cpu_devices")
  p.add_argument("--top", type=int, default=25, help="rows of the layer table")
  p.add_argument("--keep_trace", default=None,
                 help="keep the trace in this folder, with the step's HLO (step.hlo.txt)")
  args = p.parse_args()
  config = None
  if args.config:
    from ee_jax.study import load_config_file  # pylint: disable=import-outside-toplevel
    path, _, arg = args.config.partition(":")
    try:
      config = load_config_file(path, arg or None, what="--config")
    except (ConfigError, ValueError) as e:   # no such file; an argument the config rejects
      raise SystemExit(str(e)) from None
  if args.per_device_batch is None:
    args.per_device_batch = config.data.per_device_batch if config is not None else 32
  if args.steps < 1 or args.warmup < 0 or args.per_device_batch < 1:
    raise SystemExit("--steps and --per_device_batch must be >= 1, --warmup >= 0")

  from ee_jax.runtime import host_devices  # pylint: disable=import-outside-toplevel
  host_memory.tune_malloc()
  try:  # before JAX's CPU client exists, as launch.py does
    host_devices.split_cpu(args.per_device_batch, args.cpu_devices)
  except ValueError as e:
    raise SystemExit(f"--cpu_devices={args.cpu_devices}: {e}") from None
  import jax  # pylint: disable=import-outside-toplevel
  import train_step  # pylint: disable=import-outside-toplevel
  from ee_jax.runtime import parallel  # pylint: disable=import-outside-toplevel

  try:
    fn, state = train_step._step_and_state(args.task, args.dtype, args, config=config)  # pylint: disable=protected-access
    b = parallel.device_batch(args.per_device_batch)
  except ConfigError as e:
    raise SystemExit(f"{args.config or 'configs/defaults.py'}: {e}") from None
  n = jax.local_device_count()
  batch = train_step._batch(args.task, n, b, args)  # pylint: disable=protected-access
  p_state, keys = parallel.replicate(state), parallel.replicate(jax.random.PRNGKey(1))
  step = parallel.pmap_step(fn, donate_argnums=(0,))
  # Bounded like training's steps (parallel.BoundedDispatch): the host may not run far ahead.
  compiled = parallel.BoundedDispatch(step.lower(p_state, batch, keys).compile())
  hlo = compiled.as_text()
  instructions = parse_hlo(hlo)
  for _ in range(args.warmup):
    p_state, _ = compiled(p_state, batch, keys)
  jax.block_until_ready(p_state)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    p_state, _ = compiled(p_state, batch, keys)
  jax.block_until_ready(p_state)
  untraced = (time.perf_counter() - t0) / args.steps

  directory = args.keep_trace or tempfile.mkdtemp(prefix="step_profile_")
  t0 = time.perf_counter()
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(args.steps):
      p_state, _ = compiled(p_state, batch, keys)
    jax.block_until_ready(p_state)
  wall = (time.perf_counter() - t0) / args.steps
  times = device_times(read_trace(directory), instructions)
  if args.keep_trace:
    with open(os.path.join(directory, "step.hlo.txt"), "w") as f:
      f.write(hlo)
  else:
    shutil.rmtree(directory, ignore_errors=True)
  if not times:
    raise SystemExit("the trace holds no operation of the step: this profiles CPU devices")
  shape = f"{args.dates}x{args.tile}x{args.tile}x{args.bands}"
  print(f"{args.config or 'configs/defaults.py'}: {args.task} {args.dtype}, {n} device(s) x "
        f"{b} tiles of {shape}: {untraced * 1e3:.1f} ms a step untraced, {wall * 1e3:.0f} ms "
        f"traced ({args.steps} steps each)\n")
  print(tables(times, instructions, per=n * args.steps, top=args.top))


if __name__ == "__main__":
  main()
