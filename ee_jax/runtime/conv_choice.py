"""Which form computes a 3x3 convolution's kernel gradient fastest on this CPU, measured.

Why measured: the two forms of ee_jax/models/conv.py (XLA's own kernel gradient, or one
matrix product per kernel tap) trade places from one CPU to another. On a 2-core AMD EPYC
(AVX2) the tap products were 4.3x faster over the default UNet's layers; on a 2-core Intel
Xeon (Sapphire Rapids, AVX-512), where XLA runs its convolutions through YNNPACK, XLA's own
was up to 2x faster on most layers of the study's fine-tuning step, which ran 1.2x faster
with it (docs/perf_log.md). No size rule fits both, so 'auto' times the two forms once per
layer shape on the machine at hand, while the step is traced, and keeps the faster.

- Small problems never pay for the tap products (their copies cost more than XLA's
  kernel gradient): below MIN_PIXELS output pixels or MIN_WORK multiply-adds per tap XLA's
  form is taken without timing, so tiny test models trace as before.
- A measurement takes about a second per layer shape (two small compiles and a few calls);
  decisions are kept for the process and, when the persistent compilation cache is on, in
  `<cache folder>/conv_kernel_grads.json`, keyed by the CPU, the JAX version and the device
  count, so later commands on the machine reuse them.
- The tap products must win clearly (by MARGIN) to be chosen: on a near tie XLA's form,
  the simpler program, stays.
- Multi-process runs do not time (every process must build the same program): they take
  the size rule alone (tap products above it), as before measuring existed.

Either choice gives the same gradient up to fp32 summation order. `install()` hands
`use_taps` to ee_jax/models/conv.py; launch.py's modes (ee_jax/run.py) and the benchmarks
call it before building a model.
"""

import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ee_jax.runtime import host_devices

MIN_PIXELS = 256      # output maps under 16 x 16: XLA's form (the default UNet's 8 x 8 levels)
MIN_WORK = 2 ** 24    # N * Ho * Wo * C_in * C_out under this: XLA's form
MARGIN = 0.9          # tap products chosen when they take under this share of XLA's time
REPEATS = 5
RECORD = "conv_kernel_grads.json"

_decided: dict = {}   # key -> 'taps' | 'xla', this process


def install() -> None:
  """'auto' convolutions choose their kernel gradient with `use_taps` from now on."""
  from ee_jax.models import conv  # pylint: disable=import-outside-toplevel
  conv.set_kernel_grad_chooser(use_taps)


def small(x_shape, w_shape, pads) -> bool:
  """Whether the problem is below the size where the tap products can pay at all."""
  out_pixels = ((x_shape[1] + sum(pads[0]) - w_shape[0] + 1)
                * (x_shape[2] + sum(pads[1]) - w_shape[1] + 1))
  work = x_shape[0] * out_pixels * w_shape[2] * w_shape[3]
  return out_pixels < MIN_PIXELS or work < MIN_WORK


def use_taps(x_shape, w_shape, pads, dtype, forms) -> bool:
  """'auto' on CPU: whether the kernel gradient of this stride-1 NHWC/HWIO convolution
  (x [N, H, W, C_in], w [kh, kw, C_in, C_out], explicit `pads`) should be the tap products.

  `forms` = {'xla': fn, 'taps': fn}, the two kernel gradients fn(x, w, dy) -> dw to time
  (conv.py's, passed in so this module does not import it)."""
  if small(x_shape, w_shape, pads):
    return False
  if jax.process_count() > 1:
    return True
  key = _key(x_shape, w_shape, pads, dtype)
  if key not in _decided:
    _decided.update(_read_record())
    if key not in _decided:
      xla_ms, taps_ms = _time_forms(x_shape, w_shape, dtype, forms)
      _decided[key] = "taps" if taps_ms < MARGIN * xla_ms else "xla"
      _write_record(key, _decided[key], xla_ms, taps_ms)
  return _decided[key] == "taps"


def _key(x_shape, w_shape, pads, dtype) -> str:
  return (f"x{'x'.join(map(str, x_shape))} w{'x'.join(map(str, w_shape))} "
          f"pads{[list(p) for p in pads]} {jnp.dtype(dtype).name}")


def _time_forms(x_shape, w_shape, dtype, forms) -> tuple[float, float]:
  """Best-of-REPEATS milliseconds of each form (the padding is inside `forms`), calls
  alternated (a machine that gets busier or quieter meanwhile affects both alike)."""
  with jax.ensure_compile_time_eval():   # runs now, even while a step is being traced
    rng = np.random.default_rng(0)
    out_shape = x_shape[:3] + (w_shape[3],)
    args = [jax.device_put(rng.standard_normal(s).astype(jnp.dtype(dtype)))
            for s in (x_shape, w_shape, out_shape)]
    compiled = {name: jax.jit(fn).lower(*args).compile()
                for name, fn in forms.items()}
    best = {name: float("inf") for name in compiled}
    for name, fn in compiled.items():
      jax.block_until_ready(fn(*args))               # first call: buffers, thread start
    for _ in range(REPEATS):
      for name, fn in compiled.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
  return best["xla"], best["taps"]


@functools.lru_cache(maxsize=1)
def machine() -> str:
  """The CPU, the JAX version and the device count: what the timings depend on."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  cores = host_devices.usable_cores()
  return f"{model} | {cores} cores | jax {jax.__version__} | {jax.local_device_count()} devices"


def _record_path() -> str | None:
  from ee_jax.runtime import persistent_cache  # pylint: disable=import-outside-toplevel
  if not jax.config.jax_compilation_cache_dir or persistent_cache.cache_dir() is None:
    return None   # the cache is off (or not enabled in this process): keep nothing on disk
  return os.path.join(persistent_cache.cache_dir(), RECORD)


def _load(path: str | None) -> dict:
  """The whole record {machine: {key: entry}}; {} when absent or unreadable (then the
  shapes are timed again and the record rewritten: it only saves time)."""
  if path is None or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      record = json.load(f)
    return record if isinstance(record, dict) else {}
  except (OSError, ValueError):
    return {}


def _read_record() -> dict:
  entries = _load(_record_path()).get(machine(), {})
  if not isinstance(entries, dict):
    return {}
  return {k: v["form"] for k, v in entries.items()
          if isinstance(v, dict) and v.get("form") in ("taps", "xla")}


def _write_record(key: str, form: str, xla_ms: float, taps_ms: float) -> None:
  """Adds one decision, written whole to a temporary file and renamed (never half-written);
  a folder that cannot be written is skipped: the record only saves time."""
  path = _record_path()
  if path is None:
    return
  record = _load(path)
  if not isinstance(record.get(machine()), dict):
    record[machine()] = {}
  record[machine()][key] = {
      "form": form, "xla_ms": round(xla_ms, 3), "taps_ms": round(taps_ms, 3)}
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError:
    pass
