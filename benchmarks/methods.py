"""Every PEFT method on all-MiniLM-L6-v2: cost per training step and accuracy of a short run.

Part A (``--micro``), each method in a fresh process: trainable parameters, update bytes
(predicted and real), peak RSS while training and its rise over the loaded model, and
the median step time over 10 steps (after 2 warm-up steps) at batch 32 × length 64 on
SST-2 text (padded/truncated to exactly 64 tokens).
Part B: the same short federated run for every method (`fedpeft run`, 10 clients,
Dirichlet 0.5, 4 rounds, 2,000 examples), each method at one standard learning rate.

    .venv/bin/python benchmarks/methods.py --out benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import measure_steps, read_run, run_fedpeft, update_counts

# one learning rate per method family, the usual order of magnitude from each paper
LR = {
    "lora": 3e-3,
    "prompt": 3e-2,
    "prefix": 1e-2,
    "ia3": 1e-2,
    "houlsby": 3e-3,
    "pfeiffer": 3e-3,
    "bitfit": 3e-3,
    "head": 1e-2,
    "full": 5e-5,
}


def micro(method: str) -> dict[str, float]:
    import torch

    from fedpeft.config import load_config
    from fedpeft.data import load_dataset
    from fedpeft.models import MINILM_ID, get_model_spec, load_classifier, load_tokenizer
    from fedpeft.peft import model_architecture, parse_spec

    torch.set_num_threads(2)
    spec = get_model_spec(MINILM_ID)
    tok = load_tokenizer(spec)
    texts = load_dataset(load_config(overrides=["data.train_size=64"]).data, 0).train.texts
    batch = tok(
        texts[:32], padding="max_length", truncation=True, max_length=64, return_tensors="pt"
    )
    labels = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(0))
    base = load_classifier(spec, 2, 0)
    method_spec = parse_spec(method, {})
    arch = model_architecture(base)
    model = method_spec.apply(base, arch)
    measured = measure_steps(model, {**batch, "labels": labels}, steps=12, warmup=2)
    return {
        **update_counts(model, method_spec, arch),
        "extra_gflops_per_example_len64": method_spec.extra_flops(arch, 64) / 1e9,
        **measured,
    }


def short_run(method: str, out: Path, rounds: int) -> dict[str, object]:
    sets = [f"peft.method='{method}'", f"client.lr={LR[method]}", f"run.rounds={rounds}"]
    s, rounds_ = read_run(run_fedpeft(out, f"m-{method}", sets))
    return {
        "lr": LR[method],
        "accuracy_per_round": [r["eval"]["accuracy"] for r in rounds_],
        "final_accuracy": s["final_accuracy"],
        "bytes_up_per_client_round": s["bytes_up_per_client_round"],
        "median_round_s": statistics.median(r["wall_time_s"] for r in rounds_),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro", help="run part A for one method and print JSON")
    ap.add_argument("--methods", nargs="+", default=list(LR))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/methods.json"))
    args = ap.parse_args()
    if args.micro:
        print(json.dumps(micro(args.micro)))
        return
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            proc = subprocess.run(
                [sys.executable, __file__, "--micro", method],
                check=True,
                capture_output=True,
                text=True,
            )
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method].update(short_run(method, Path(tmp), args.rounds))
            print(method, json.dumps(results[method]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
