#!/usr/bin/env bash
# Issue 19's accelerator checks as one short script, for a lent GPU machine.
#
#   PYTHON=.venv/bin/python OUT=benchmarks/results bash benchmarks/gpu.sh
#
# On CUDA: grouped LoRA (K clients in one pass over the shared base) against one-by-one
# training (float32 and bf16 autocast), client updates/s for 1, 4, 16, 64 clients per pass
# with and without torch.compile, then the default job's seconds per round with one client
# per pass against the automatic grouping. Without CUDA it runs the same path on CPU with
# the tiny BERT (the fallback the tests run), so the script itself is checked anywhere.
# Results: $OUT/gpu_check*.json, $OUT/gpu_runtime.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" benchmarks/gpu_check.py --device cuda --compile --out "$OUT/gpu_check.json"
  (cd benchmarks && "$PY" runtime_speed.py --repeats 1 \
    --base "run.rounds=3;run.device='cuda'" \
    --variant "one_per_pass=run.clients_per_pass=1" \
    --variant "grouped_auto=run.clients_per_pass=0" \
    --out "$OUT/gpu_runtime.json")
else
  echo "no CUDA device: the CPU fallback of the same path (tiny BERT)"
  "$PY" benchmarks/gpu_check.py --device cpu --per-pass 1,4 --out "$OUT/gpu_check_cpu.json"
fi
