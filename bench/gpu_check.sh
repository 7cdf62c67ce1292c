#!/usr/bin/env bash
# The prepared GPU check from a bare machine: install case-tune with a CUDA build of torch the
# machine's driver takes, then `python -m bench.gpu_check` (its table goes to results/bench.md).
#
#   bash bench/gpu_check.sh [--steps tests,packing,split,prepare,demo] [--no-write]
#
# PYTHON picks the interpreter (default python3). WHEELS=DIR installs from a folder of wheels
# instead of a package index (a machine that reaches none). A torch that already sees the GPU
# is kept: the CUDA index is asked only when the installed torch cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 MPLBACKEND=Agg

sees_gpu() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if ! sees_gpu; then
  # nvidia-smi's header names the newest CUDA the driver runs; take the newest wheel index
  # at or below it.
  cuda=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]\).*/\1\2/p' | head -1 || true)
  fi
  if [ -z "$cuda" ]; then
    echo "gpu_check.sh: no NVIDIA driver answers (nvidia-smi); running the CPU dry run" >&2
  else
    index=""
    for v in 130 129 128 126 124 121 118; do
      if [ "$cuda" -ge "$v" ]; then index="cu$v"; break; fi
    done
    if [ -z "$index" ]; then
      echo "gpu_check.sh: the driver takes CUDA ${cuda:0:-1}.${cuda: -1}, older than any torch wheel (11.8)" >&2
      exit 1
    fi
    echo "gpu_check.sh: driver takes CUDA ${cuda:0:-1}.${cuda: -1}: torch from the $index index"
    # Uninstalled first: a CPU build already installed would otherwise "satisfy" torch.
    "$PY" -m pip uninstall -q -y torch 2>/dev/null || true
    if [ -n "${WHEELS:-}" ]; then
      "$PY" -m pip install -q --no-index --find-links "$WHEELS" torch
    else
      "$PY" -m pip install -q torch --index-url "https://download.pytorch.org/whl/$index"
    fi
    if ! sees_gpu; then
      echo "gpu_check.sh: torch still sees no GPU after installing the $index build" >&2
      exit 1
    fi
  fi
fi

# The project and its test tools; without an index, what is there (a step whose packages are
# missing says so in its row of the table).
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" -e '.[test]' ||
    "$PY" -m pip install -q --no-deps --no-build-isolation -e .
else
  "$PY" -m pip install -q -e '.[test]' ||
    "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
exec "$PY" -m bench.gpu_check "$@"
