"""Would serving an average of the last globals steady a swinging federation? (issue 12)

Runs one ``fedpeft run`` in this process with every round's checkpoint kept (the
checkpoint module's ``KEEP`` raised for this run only), then scores, round by round on the
eval split, the round's global (``last``), the mean of the last three globals' tensors
(``tail3``) and exponential averages of the globals with decay 0.5 and 0.7 (``ema5``,
``ema7``), each started at round 1. Results are merged into ``RESULTS`` under ``NAME``.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_average_offline.py NAME RESULTS \\
        "data.dataset='sst2'" "run.seed=1" "data.alpha=0.1" "run.workers=1" "run.threads=1"
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

import fedpeft.server.checkpoint as checkpoint
from fedpeft.cli.main import app
from fedpeft.compression import decode
from fedpeft.config import build_config, read_toml
from fedpeft.peft import set_adapter_state
from fedpeft.server.evaluate import predict_logits
from fedpeft.server.task import build_task
from fedpeft.types import AdapterState

OUT = "runs/serve_average"


def train(name: str, sets: list[str]) -> Path:
    checkpoint.KEEP = 1000  # every round's global stays on disk
    args = ["run", "--set", f"run.output_dir='{OUT}'", "--set", f"run.name='{name}'"]
    for s in sets:
        args += ["--set", s]
    app(args, standalone_mode=False)
    return max(Path(OUT).glob(f"{name}-*"), key=os.path.getmtime)


def globals_by_round(run_dir: Path) -> dict[int, AdapterState]:
    out = {}
    for f in sorted((run_dir / "checkpoint").glob("round-*.safetensors")):
        flat, _ = decode(f.read_bytes())
        prefix = "adapters::global::"
        out[int(f.name[6:12])] = {
            k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)
        }
    return out


def score(run_dir: Path) -> dict[str, list[float]]:
    cfg = build_config(read_toml(run_dir / "config.toml"))
    task = build_task(cfg)
    labels = np.asarray(task.data.eval.labels)

    def accuracy(state: AdapterState) -> float:
        set_adapter_state(task.model, {k: v.to(task.device) for k, v in state.items()})
        logits = predict_logits(task.model, task.data.eval, task.eval_batch_size, task.device)
        return float((logits.argmax(-1).numpy() == labels).mean())

    states = globals_by_round(run_dir)
    trained = [r for r in sorted(states) if r >= 1]
    out: dict[str, list[float]] = {"last": [], "tail3": [], "ema5": [], "ema7": []}
    ema: dict[float, AdapterState] = {}
    for r in trained:
        s = states[r]
        for decay in (0.5, 0.7):
            prev = ema.get(decay)
            ema[decay] = s if prev is None else {k: decay * prev[k] + (1 - decay) * s[k] for k in s}
        tail = [states[q] for q in trained if q <= r][-3:]
        out["last"].append(accuracy(s))
        out["tail3"].append(accuracy({k: sum(t[k] for t in tail) / len(tail) for k in s}))
        out["ema5"].append(accuracy(ema[0.5]))
        out["ema7"].append(accuracy(ema[0.7]))
        print(r, {k: round(v[-1], 4) for k, v in out.items()}, flush=True)
    return out


def main() -> None:
    name, results, sets = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    scores = score(train(name, sets))
    merged = json.loads(results.read_text()) if results.is_file() else {}
    merged[name] = scores
    results.write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
