"""Synchronous rounds vs the asynchronous, staleness-aware FedBuff mode on a mixed-tier
population, compared in simulated time (issue 5).

Both runs train the same number of client updates (``--updates``): synchronous rounds of
every client with the device simulation (a round waits for its slowest client), and
asynchronous server steps every ``--buffer`` replies, with replies arriving on each
device's simulated clock. Writes ``--out`` (JSON) and a PNG of accuracy against simulated
time.

    .venv/bin/python benchmarks/sync_async.py --out benchmarks/results/sync_async.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import plot_against_clock, read_run, run_fedpeft, time_to_target

BASE = [
    "data.alpha=0.5",
    "data.train_size=1000",
    "data.eval_size=400",
    "profiles.mix={high=0.3,mid=0.4,low=0.3}",
]


def summarise(run_dir: Path, target: float) -> dict[str, Any]:
    _, rounds = read_run(run_dir)
    acc = [r["eval"]["accuracy"] for r in rounds]
    clock = [r["sim_clock_s"] for r in rounds]
    reached = time_to_target(acc, clock, target)
    return {
        "accuracy": acc,
        "sim_clock_s": clock,
        "sim_time_to_target_s": reached,
        "final_accuracy": acc[-1],
        "updates": sum(r["accepted"] for r in rounds),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--buffer", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.75)
    args = ap.parse_args()
    n = args.clients
    variants = {
        "sync (all clients a round)": [
            f"data.num_clients={n}",
            f"run.rounds={args.updates // n}",
            "simulation.devices=true",
            "simulation.availability=false",
        ],
        f"async FedBuff (K={args.buffer}, a=0.5)": [
            f"data.num_clients={n}",
            "server.mode='async'",
            f"server.buffer_size={args.buffer}",
            f"run.rounds={args.updates // args.buffer}",
        ],
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sets in variants.items():
            tag = "".join(ch if ch.isalnum() else "-" for ch in label)[:30]
            run_dir = run_fedpeft(Path(tmp), tag, [*BASE, *sets])
            results[label] = {"sets": sets, **summarise(run_dir, args.target)}
            print(label, json.dumps(results[label]), flush=True)
    args.out.write_text(
        json.dumps({"base": BASE, "target": args.target, "results": results}, indent=2) + "\n"
    )
    curves = {k: (r["sim_clock_s"], r["accuracy"]) for k, r in results.items()}
    title = "sync vs async, mixed tiers 30/40/30, Dirichlet 0.5"
    plot_against_clock(curves, args.out.with_suffix(".png"), args.target, title)


if __name__ == "__main__":
    main()
