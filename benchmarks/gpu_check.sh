#!/usr/bin/env bash
# The training-throughput suite on a GPU machine, in under 5 minutes on one H100/H200, ending
# with one table: pre-training and fine-tuning steps of the default model on 64x64x13 tiles,
# fp32 and bf16, per-device batch 32 and 128, all local GPUs; MFU against the GPU's dense
# peak (bf16 tensor cores for bf16; TF32 for fp32, which is what JAX's default precision
# runs fp32 convolutions and matmuls with on Ampere and later).
#
#   bash benchmarks/gpu_check.sh                 # the table; JSON in $OUT or /tmp
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh --per_device_batch 32 --steps 10
#   GPU_CHECK_ANY_BACKEND=1 bash benchmarks/gpu_check.sh --per_device_batch 2 --tile 16 \
#     --steps 1    # the script itself, on a machine without a GPU
#
# Runs from any copy of the repository (no install of the package itself: the benchmark puts
# the repo root on sys.path). Needs a Python whose JAX sees the GPU, with flax, optax, absl,
# etils, PyYAML and ml_collections; the first of $PYTHON, .venv/bin/python, python3, python
# that qualifies is used. On a fresh machine that can reach PyPI:
#   make venv && .venv/bin/pip install -U "jax[cuda13]"     # or jax[cuda12] for older drivers
# Where ml_collections is missing and nothing can be fetched (e.g. the device tool's machines,
# whose image has CUDA JAX, flax and optax), carry its wheel in .whl/
# (`pip download --no-deps ml_collections -d .whl`); it is installed from there into /tmp.
# The benchmark stops starting configurations after 230 s (--budget_s) and prints the table of
# those it ran; `timeout` is only the backstop for a hung compile or GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in .venv/bin/python python3 python; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu' and
                   not int('${GPU_CHECK_ANY_BACKEND:-0}'))" 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "gpu_check: no Python whose JAX sees a GPU (set PYTHON=...)" >&2
  exit 1
fi
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if compgen -G ".whl/ml_collections-*.whl" >/dev/null; then
    rm -rf /tmp/ee_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ee_site \
      .whl/ml_collections-*.whl
    export PYTHONPATH="/tmp/ee_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: ml_collections is missing; put its wheel in .whl/ (see the header)" >&2
    exit 1
  fi
fi

NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
# Dense (no sparsity) peak TFLOP/s per GPU: bf16 tensor cores, TF32 tensor cores.
case "$NAME" in
  *H100*PCIe*)   PEAK="bfloat16=756,float32=378" ;;
  *H100*NVL*)    PEAK="bfloat16=835,float32=418" ;;
  *H100*|*H200*) PEAK="bfloat16=989,float32=495" ;;   # SXM
  *A100*)        PEAK="bfloat16=312,float32=156" ;;
  *L40S*)        PEAK="bfloat16=362,float32=183" ;;
  *L40*)         PEAK="bfloat16=181,float32=90" ;;
  *L4*)          PEAK="bfloat16=121,float32=60" ;;
  *)             PEAK="" ;;
esac
echo "gpu_check: ${NAME:-unknown GPU} (${PEAK:-no known peak: MFU n/a}); python $PY" >&2

JSON="${OUT:-/tmp}/gpu_check.json"
mkdir -p "$(dirname "$JSON")"
# Unbounded compiles or a hung GPU must not outlive the 5 minutes: the benchmark itself stops
# starting configurations at 230 s; SIGTERM at 280 s prints what it has; SIGKILL at 290 s.
status=0
timeout -k 10 280 "$PY" benchmarks/train_step.py --per_device_batch 32,128 --steps 20 \
  --warmup 3 --budget_s 230 ${PEAK:+--peak_tflops "$PEAK"} --json_out "$JSON" "$@" || status=$?
echo "JSON: $JSON" >&2
exit "$status"
