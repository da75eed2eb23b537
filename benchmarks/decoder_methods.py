"""SmolLM2-135M-Instruct instruction-tuned on SST-2: cost per step and generative accuracy.

Part A (``--micro METHOD``, each in a fresh process): trainable parameters and update
bytes (predicted and real), peak RSS while training and its rise over the loaded model,
and the median step time over 2 steps (after 1 warm-up) on one real instruction batch
(8 SST-2 prompts + answers, chat template, text ≤ 32 tokens).
Part B: the zero-shot score of the untrained model (round 0: LoRA and IA3 both start as
the identity) and the same short federated run per method
(``examples/smollm2_instruct_sst2.toml``: 4 clients, 2 rounds, shrunk by ``SHRINK`` to
64 train / 64 eval examples and text ≤ 32 tokens, because a SmolLM2 training step takes
tens of seconds on the 2 shared CPU cores), scored by exact match of the greedily
generated label word.

    .venv/bin/python benchmarks/decoder_methods.py --out benchmarks/results/decoder_methods.json
    (to run methods apart: --methods ia3 --skip-zero-shot; results merge into --out)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import measure_steps, read_run, update_counts

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "smollm2_instruct_sst2.toml"
LR = {"lora": 1e-3, "ia3": 1e-2, "prompt": 3e-2}
SHRINK = ["run.threads=2", "data.train_size=64", "data.eval_size=64", "model.max_length=32"]


def _cfg(*extra: str):  # type: ignore[no-untyped-def]
    from fedpeft.config import load_config

    return load_config(CONFIG, [*SHRINK, *extra])


def micro(method: str) -> dict[str, float]:
    import numpy as np

    from fedpeft.peft import architecture
    from fedpeft.server.task import build_task

    task = build_task(_cfg(f"peft.method='{method}'"))
    model, spec = task.model, task.method
    arch = architecture(model.config, 0, causal_lm=True)
    batch = task.data.train.collate(np.arange(8))
    measured = measure_steps(model, batch.model_inputs(), steps=3, warmup=1)
    return {
        **update_counts(model, spec, arch),
        "batch_tokens": int(batch.attention_mask.sum()),
        **measured,
    }


def zero_shot() -> dict[str, float]:
    from fedpeft.server.evaluate import evaluate_model
    from fedpeft.server.task import build_task

    task = build_task(_cfg())
    start = time.perf_counter()
    metrics = evaluate_model(task.model, task.data.eval, task.eval_batch_size, task.device)
    return metrics | {"eval_time_s": time.perf_counter() - start}


def short_run(method: str, out: Path) -> dict[str, object]:
    sets = [*SHRINK, f"peft.method='{method}'", f"client.lr={LR[method]}"]
    s, rounds = read_run(_run(out, f"d-{method}", sets))
    return {
        "lr": LR[method],
        "eval_per_round": [r["eval"] for r in rounds],
        "final_accuracy": s["final_accuracy"],
        "bytes_up_per_client_round": s["bytes_up_per_client_round"],
        "median_round_s": statistics.median(r["wall_time_s"] for r in rounds),
    }


def _run(out: Path, tag: str, sets: list[str]) -> Path:
    """``fedpeft run --config CONFIG --set …`` in a fresh process; returns the run folder."""
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run", "--config", str(CONFIG)]
    for item in [f"run.output_dir='{out}'", f"run.name='{tag}'", *sets]:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fedpeft run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return sorted(out.glob(f"{tag}-*"))[-1]


def _child(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro", help="run part A for one method and print JSON")
    ap.add_argument("--zero-shot", action="store_true", help="print round-0 metrics as JSON")
    ap.add_argument("--methods", nargs="+", default=["lora", "ia3"])
    ap.add_argument("--skip-zero-shot", action="store_true", help="(to run methods apart)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/decoder_methods.json"))
    args = ap.parse_args()
    if args.micro or args.zero_shot:
        print(json.dumps(micro(args.micro) if args.micro else zero_shot()))
        return
    results: dict[str, object] = {}
    if not args.skip_zero_shot:
        results["zero_shot"] = _child("--zero-shot")
        print("zero_shot", json.dumps(results["zero_shot"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            row = _child("--micro", method) | short_run(method, Path(tmp))
            results[method] = row
            print(method, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    args.out.write_text(json.dumps(old | results, indent=2) + "\n")  # merge with earlier runs


if __name__ == "__main__":
    main()
