"""EfficientNet-Lite0 on CIFAR-10: LoRA vs head vs BitFit (vs full), cost per step and
accuracy after the same short federated run.

Part A (``--micro``), each method in a fresh process: trainable parameters and update bytes
(predicted and real), peak RSS while training and its rise over the loaded model, and the
median step time over 6 steps (after 2 warm-up steps) at batch 32 × 64×64 px.
Part B: ``fedpeft run --config examples/efficientnet_cifar10.toml`` for every method
(4 clients, Dirichlet 0.5, 3 rounds, 600 training / 300 evaluation images at 64 px),
each method at one standard learning rate.

    .venv/bin/python benchmarks/vision_methods.py --out benchmarks/results/vision_methods.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import measure_steps, read_run, update_counts

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "efficientnet_cifar10.toml"
LR = {"lora": 3e-3, "head": 1e-2, "bitfit": 3e-3, "full": 3e-4}


def micro(method: str) -> dict[str, float]:
    import numpy as np
    import torch

    from fedpeft.config import load_config
    from fedpeft.peft import model_architecture, parse_spec
    from fedpeft.server.task import build_data, load_base

    torch.set_num_threads(2)
    cfg = load_config(CONFIG, overrides=["data.train_size=64", "data.eval_size=8"])
    data = build_data(cfg)
    batch = data.train.collate(np.arange(32))
    base = load_base(cfg, data.spec, data.dataset)
    spec = parse_spec(method, {})
    arch = model_architecture(base)
    model = spec.apply(base, arch)
    measured = measure_steps(model, batch.model_inputs(), steps=8, warmup=2)
    return {
        **update_counts(model, spec, arch),
        "extra_mflops_per_image": spec.extra_flops(arch, 0) / 1e6,
        **measured,
    }


def short_run(method: str, out: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run", "--config", str(CONFIG)]
    for s in (f"run.output_dir='{out}'", f"run.name='v-{method}'", f"peft.method='{method}'"):
        cmd += ["--set", s]
    cmd += ["--set", f"client.lr={LR[method]}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fedpeft run failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary, rounds = read_run(sorted(out.glob(f"v-{method}-*"))[-1])
    return {
        "lr": LR[method],
        "accuracy_per_round": [r["eval"]["accuracy"] for r in rounds],
        "final_accuracy": summary["final_accuracy"],
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "median_round_s": statistics.median(r["wall_time_s"] for r in rounds),
        "run_peak_rss_mib": summary["peak_rss_bytes"] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro", help="run part A for one method and print JSON")
    ap.add_argument("--methods", nargs="+", default=["lora", "head", "bitfit"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/vision_methods.json"))
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
            results[method].update(short_run(method, Path(tmp)))
            print(method, json.dumps(results[method]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial results too


if __name__ == "__main__":
    main()
