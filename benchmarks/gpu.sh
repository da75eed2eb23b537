#!/usr/bin/env bash
# Issue 19's accelerator checks as one short script, for a lent GPU machine.
#
#   PYTHON=.venv/bin/python OUT=benchmarks/results bash benchmarks/gpu.sh
#
# On CUDA, in this order (cheapest and most important first, each result written as soon
# as it is known):
#   1. gpu_mfu.json, gpu_mfu_compiled.json — LoRA step MFU on a 7B-shaped LLaMA (random
#      weights, bf16) against the measured bf16 matmul peak (target >= 45 %), eager and
#      with the decoder blocks compiled; then compiled with the loss over the vocabulary
#      in chunks (gpu_mfu_chunked.json), and with LoRA merged into one matmul per
#      projection too (…_chunked_merged.json), also at batch 8 (…_b8: it did not fit before);
#   2. gpu_check.json — MiniLM: grouped LoRA (K clients in one pass over the shared base)
#      against one-by-one training (float32: equal; bf16 autocast: no further from float32
#      than one-by-one bf16), then client updates/s for 1, 16, 64 clients per pass;
#   3. gpu_check_smollm2.json — the same for SmolLM2-135M as a classifier (bf16);
#   4. gpu_runtime.json — the default job's seconds per round, one client per pass against
#      the automatic grouping;
#   5. gpu_check_compile.json — MiniLM's 64-client pass with the blocks compiled.
# A bare lent machine (no dependencies, no weights, 64 MiB a command) runs the same checks
# through benchmarks/gpu_lent.sh, on stand-in models of the real shapes.
# Without CUDA it runs the same paths on the CPU with tiny models (the fallback the tests
# run), so the script itself is checked anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" benchmarks/gpu_mfu.py --out "$OUT/gpu_mfu.json"
  "$PY" benchmarks/gpu_mfu.py --compile --out "$OUT/gpu_mfu_compiled.json"
  "$PY" benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --out "$OUT/gpu_mfu_chunked.json"
  "$PY" benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --merged-lora \
    --out "$OUT/gpu_mfu_chunked_merged.json"
  "$PY" benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --merged-lora --batch 8 \
    --out "$OUT/gpu_mfu_chunked_merged_b8.json"
  "$PY" benchmarks/gpu_check.py --device cuda --per-pass 1,16,64 --out "$OUT/gpu_check.json"
  "$PY" benchmarks/gpu_check.py --device cuda --per-pass 1,32 --clients 32 --steps 4 \
    --precisions bf16 --model HuggingFaceTB/SmolLM2-135M-Instruct \
    --set "model.task='classify'" --out "$OUT/gpu_check_smollm2.json"
  (cd benchmarks && "$PY" runtime_speed.py --repeats 1 \
    --base "run.rounds=3;run.device='cuda'" \
    --variant "one_per_pass=run.clients_per_pass=1" \
    --variant "grouped_auto=run.clients_per_pass=0" \
    --out "$OUT/gpu_runtime.json")
  "$PY" benchmarks/gpu_check.py --device cuda --per-pass 64 --precisions off --compile \
    --out "$OUT/gpu_check_compile.json"
else
  echo "no CUDA device: the CPU fallback of the same paths (tiny models)"
  "$PY" benchmarks/gpu_mfu.py --tiny --out "$OUT/gpu_mfu_cpu.json"
  "$PY" benchmarks/gpu_mfu.py --tiny --chunked-loss 16 --merged-lora \
    --out "$OUT/gpu_mfu_cpu_chunked_merged.json"
  "$PY" benchmarks/gpu_check.py --device cpu --per-pass 1,4 --out "$OUT/gpu_check_cpu.json"
  "$PY" benchmarks/gpu_check.py --device cpu --per-pass 4 --model tiny-llama \
    --set "model.task='classify'" --out "$OUT/gpu_check_cpu_llama.json"
fi
