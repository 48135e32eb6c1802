#!/usr/bin/env bash
# The GPU speed grid (benchmarks/gpu.py) on a GPU machine, bare or not, within a time limit.
#
#   OUT=/path/to/results benchmarks/gpu_run.sh [more arguments for python -m benchmarks.gpu]
#
# 1. Reuses JAX when it already sees the GPU; otherwise installs jax[cuda13] or jax[cuda12] to
#    match the driver's CUDA version. Reuses torch when it already sees CUDA; otherwise tries the
#    CUDA build from PyTorch's index (when that fails, the torch-cuda peer is reported unavailable).
#    Installs jrnn's own dependencies that are missing. Every step is logged to $OUT/gpu_run.log.
# 2. Runs the GPU correctness tests (pytest -k real_gpu; RUN_TESTS=0 skips them) into
#    $OUT/gpu_tests.log.
# 3. Runs the grid with a budget: no case starts once DEADLINE_S seconds (default 360, counted
#    from the start of this script, installs included) minus a margin have passed. Results go to
#    $OUT/gpu.json and $OUT/gpu.md after every case; running the script again resumes where it
#    stopped. The first pass is short (--pass short); run again with --pass full to refine it.
#
# Environment: OUT (default ./gpu_results), DEADLINE_S (360), PYTHON (python3), PIP_ARGS (extra
# arguments for pip, e.g. a local wheel folder: "--no-index --find-links /wheels"), INSTALL (1;
# 0 installs nothing, e.g. for "INSTALL=0 benchmarks/gpu_run.sh --dry-run" on a CPU).
set -uo pipefail

START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_results}"
DEADLINE_S="${DEADLINE_S:-360}"
PY="${PYTHON:-python3}"
PIP_ARGS="${PIP_ARGS:-}"
INSTALL="${INSTALL:-1}"
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"

log() { echo "[gpu_run $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
pip_install() {
  if [ "$INSTALL" = 0 ]; then log "INSTALL=0: not installing $*"; return 1; fi
  log "pip install $*"; "$PY" -m pip install -q $PIP_ARGS "$@" >>"$LOG" 2>&1
}

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >>"$LOG" 2>&1
CUDA_MAJOR=$(nvidia-smi 2>/dev/null | grep -o "CUDA Version: [0-9]*" | grep -o "[0-9]*$" || true)
log "driver CUDA version: ${CUDA_MAJOR:-unknown}"

jax_sees_gpu() { "$PY" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' >/dev/null 2>&1; }
if jax_sees_gpu; then
  log "reusing JAX $("$PY" -c 'import jax; print(jax.__version__)') on $("$PY" -c 'import jax; print(jax.devices()[0].device_kind)')"
else
  if [ "${CUDA_MAJOR:-12}" -ge 13 ] 2>/dev/null; then WANT=cuda13; else WANT=cuda12; fi
  pip_install -U "jax[$WANT]" || log "could not install jax[$WANT]"
  jax_sees_gpu || log "JAX still sees no GPU: the run records that it was skipped"
fi

torch_sees_cuda() { "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
if torch_sees_cuda; then
  log "reusing torch $("$PY" -c 'import torch; print(torch.__version__)') with CUDA"
else
  if [ "${CUDA_MAJOR:-12}" -ge 13 ] 2>/dev/null; then TAG=cu130; else TAG=cu124; fi
  pip_install torch --index-url "https://download.pytorch.org/whl/$TAG" \
    || log "no torch with CUDA: the torch-cuda peer will be reported unavailable"
fi

for pair in optax:optax flax:flax chex:chex orbax.checkpoint:orbax-checkpoint tqdm:tqdm matplotlib:matplotlib; do
  module="${pair%%:*}"; package="${pair#*:}"
  "$PY" -c "import $module" >/dev/null 2>&1 || pip_install "$package" || log "could not install $package"
done

# The compiled GPU paths against unroll first (tests/test_gpu_paths.py -k real_gpu, a minute or two):
# their outcome goes to $OUT/gpu_tests.log whatever the timings say.
if [ "${RUN_TESTS:-1}" = 1 ] && "$PY" -c "import pytest" >/dev/null 2>&1; then
  log "running the GPU correctness tests (tests/test_gpu_paths.py -k real_gpu)"
  (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false \
    timeout "${TESTS_TIMEOUT_S:-150}" "$PY" -m pytest -q -p no:cacheprovider -k real_gpu tests/test_gpu_paths.py \
    >"$OUT/gpu_tests.log" 2>&1)
  log "GPU correctness tests: exit $? ($(tail -n 1 "$OUT/gpu_tests.log"))"
fi

ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( DEADLINE_S - ELAPSED - 60 ))  # the margin: the case in progress, and writing the results
[ "$BUDGET" -lt 30 ] && BUDGET=30
log "setup took ${ELAPSED}s; running the grid with --budget-s $BUDGET into $OUT"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the card in the same process
cd "$ROOT"
"$PY" -m benchmarks.gpu --out "$OUT" --budget-s "$BUDGET" --no-progress "$@" 2>&1 | tee -a "$LOG"
STATUS=${PIPESTATUS[0]}
log "done in $(( $(date +%s) - START ))s (exit $STATUS); results: $OUT/gpu.json, $OUT/gpu.md"
exit "$STATUS"
