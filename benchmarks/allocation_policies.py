"""Allocation policies on a mixed-tier federation with simulated devices (issue 4).

Runs the same federation under ``utility``, the best ``uniform`` configuration that fits
the smallest device, and ``tiered``, each with ``simulation.devices = true`` (thread caps,
availability dropouts, deadline stragglers, simulated time from the cost model), and
reports accuracy per round, simulated time to a target accuracy, participation per tier
and bytes. Writes ``--out`` (JSON) and a PNG of accuracy against simulated time.

    .venv/bin/python benchmarks/allocation_policies.py \
        --out benchmarks/results/allocation_policies.json --target 0.75
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import plot_against_clock, read_run, run_fedpeft, time_to_target

BASE = [
    "data.alpha=0.1",
    "data.train_size=1000",
    "run.rounds=8",
    "profiles.mix={high=0.3,mid=0.4,low=0.3}",
    "simulation.devices=true",
    "allocation.enabled=true",
]
TOP = "layers=[3,4,5]"
VARIANTS = {
    "utility": ["allocation.policy='utility'"],
    "uniform (lora r8 top, fits low)": [
        "allocation.policy='uniform'",
        f"allocation.uniform={{method='lora',options={{r=8,alpha=16,{TOP}}}}}",
    ],
    "tiered (r16 / r8 / r4 top)": [
        "allocation.policy='tiered'",
        "allocation.tiers={high={method='lora',options={r=16,alpha=32}},"
        "mid={method='lora',options={r=8,alpha=16}},"
        f"low={{method='lora',options={{r=4,alpha=8,{TOP}}}}}}}",
    ],
}


def participation(run_dir: Path) -> dict[str, dict[str, int]]:
    """Per tier: client-rounds sampled, trained (ok), and each reason for not training."""
    out: dict[str, dict[str, int]] = {}
    for line in (run_dir / "clients.jsonl").read_text().splitlines():
        c = json.loads(line)
        row = out.setdefault(c["tier"] or "?", {"sampled": 0})
        row["sampled"] += 1
        row[c["status"]] = row.get(c["status"], 0) + 1
    return out


def configs(run_dir: Path) -> dict[str, int]:
    """How often each configuration was trained (client-rounds with status ok)."""
    out: dict[str, int] = {}
    for line in (run_dir / "clients.jsonl").read_text().splitlines():
        c = json.loads(line)
        if c["status"] == "ok":
            out[c["config"]] = out.get(c["config"], 0) + 1
    return dict(sorted(out.items()))


def summarise(run_dir: Path, target: float) -> dict[str, Any]:
    summary, rounds = read_run(run_dir)
    acc = [r["eval"]["accuracy"] for r in rounds]
    clock = [r["sim_clock_s"] for r in rounds]
    reached = time_to_target(acc, clock, target)
    return {
        "accuracy_per_round": acc,
        "sim_clock_s": clock,
        "final_accuracy": acc[-1],
        "best_accuracy": max(acc),
        "sim_time_to_target_s": reached,
        "participation": participation(run_dir),
        "configs_trained": configs(run_dir),
        "bytes_up_total": summary["bytes_up_total"],
        "bytes_down_total": summary["bytes_down_total"],
        "wall_time_s": summary["wall_time_s"],
    }


def plot(results: dict[str, dict[str, Any]], path: Path, target: float) -> None:
    curves = {k: (r["sim_clock_s"], r["accuracy_per_round"]) for k, r in results.items()
              if "accuracy_per_round" in r}  # fmt: skip
    title = "mixed tiers 30/40/30, Dirichlet 0.1, simulated devices"
    plot_against_clock(curves, path, target, title)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", type=float, default=0.75)
    ap.add_argument("--set", action="append", default=[], help="extra overrides for all")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sets in VARIANTS.items():
            tag = "".join(ch if ch.isalnum() else "-" for ch in label)[:40]
            try:
                run_dir = run_fedpeft(Path(tmp), tag, [*BASE, *args.set, *sets])
                results[label] = {"sets": sets, **summarise(run_dir, args.target)}
            except RuntimeError as e:
                results[label] = {"sets": sets, "error": str(e)}
            print(label, json.dumps(results[label]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"base": [*BASE, *args.set], "target": args.target, "results": results}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), args.target)


if __name__ == "__main__":
    main()
