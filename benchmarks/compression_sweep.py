"""Accuracy against total bytes (up + down, every round) for compressed updates (issue 15).

Runs ``fedpeft run`` for every variant × dataset × seed (Dirichlet 0.5, the default 12
rounds) and reports the final dev accuracy against the bytes the run's ``metrics.jsonl``
counted (``len(payload)`` of every message both ways). Variants:

- ``fp32``: today (nothing compressed);
- ``b bits`` (16, 8, 4, 2), with and without error feedback: ``bits_up = bits_down = b``;
- ``top-k`` 10 % and 1 % (float32 values, error feedback) up, 8 bits down;
- ``adaptive``: ``bits_up = "adaptive"`` on the mixed-tier federation (simulated devices,
  30/40/30 % high/mid/low), 8 bits down.

It refuses to report a compressed variant whose upload is not smaller than fp32's: that
means the round loop does not apply ``[compression]`` yet (the library is built; the loop
wiring is the lead's). Results: ``--out`` (JSON) and a PNG beside it.

    nice -n 10 .venv/bin/python benchmarks/compression_sweep.py \
        --out benchmarks/results/compression_sweep.json [--datasets sst2 ag_news] [--seeds 0 1 2]

About 5 minutes a run on the 2-core CI machine: 10 variants × 2 datasets × 3 seeds ≈ 5 h.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import read_run, run_fedpeft

MIXED = ["simulation.devices=true", "simulation.availability=false"]


def variants() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"fp32": []}
    for bits in (16, 8, 4, 2):
        both = [f"compression.bits_up={bits}", f"compression.bits_down={bits}"]
        out[f"{bits} bits +EF"] = both
        if bits <= 4:
            out[f"{bits} bits, no EF"] = [*both, "compression.error_feedback=false"]
    for frac in (0.1, 0.01):
        out[f"top-{frac:.0%} +EF"] = [f"compression.topk={frac}", "compression.bits_down=8"]
    # a LoRA upload is ~0.3 MB, seconds at most, so a share of 0.3 % of the 120 s deadline
    # (0.36 s) is what separates the tiers: high (20 Mbit/s) fits 32 bits, mid (5) 16, low (1) 4
    out["adaptive (mixed tiers)"] = [
        *MIXED,
        "compression.bits_up='adaptive'",
        "compression.deadline_share=0.003",
        "compression.bits_down=8",
    ]
    return out


def one_run(out: Path, tag: str, sets: list[str]) -> dict[str, Any]:
    run_dir = run_fedpeft(out, tag, sets)
    summary, rounds = read_run(run_dir)
    total = sum(r["bytes_up"] + r["bytes_down"] for r in rounds)
    return {
        "final_accuracy": summary["final_accuracy"],
        "accuracy_per_round": [r["eval"]["accuracy"] for r in rounds],
        "bytes_per_round": [r["bytes_up"] + r["bytes_down"] for r in rounds],
        "total_bytes": total,
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["final_accuracy"] for r in runs]
    return {
        "final_accuracy_mean": statistics.mean(acc),
        "final_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "total_bytes_mean": statistics.mean(r["total_bytes"] for r in runs),
        "bytes_up_per_client_round": statistics.mean(r["bytes_up_per_client_round"] for r in runs),
        "runs": runs,
    }


def check_wired(label: str, row: dict[str, Any], fp32: dict[str, Any]) -> None:
    if (
        label != "fp32"
        and row["bytes_up_per_client_round"] >= 0.9 * fp32["bytes_up_per_client_round"]
    ):
        raise SystemExit(
            f"variant {label!r} sent as many bytes up as fp32: the round loop does not apply "
            "[compression] yet, so its accuracy would be fp32's. Wire it in first."
        )


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), dpi=120)
    panels = [axes] if len(results) == 1 else list(axes)
    for ax, (dataset, rows) in zip(panels, results.items(), strict=True):
        for label, row in rows.items():
            ax.errorbar(
                row["total_bytes_mean"],
                row["final_accuracy_mean"],
                yerr=row["final_accuracy_std"],
                marker="o",
                ms=4,
                capsize=2,
                label=label,
            )
        ax.set_xscale("log")
        ax.set_xlabel("total bytes, up + down, all rounds")
        ax.set_ylabel("final dev accuracy")
        ax.set_title(f"{dataset}, Dirichlet 0.5", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", nargs="+", default=["sst2", "ag_news"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    args = ap.parse_args()
    chosen = {k: v for k, v in variants().items() if not args.only or k in args.only}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            rows: dict[str, Any] = {}
            for label, sets in chosen.items():
                runs = []
                for seed in args.seeds:
                    base = [f"data.dataset='{dataset}'", "data.partition='dirichlet'"]
                    tag = "".join(ch if ch.isalnum() else "-" for ch in f"{dataset}-{label}-{seed}")
                    runs.append(one_run(Path(tmp), tag, [*base, f"run.seed={seed}", *sets]))
                rows[label] = summarise(runs)
                if "fp32" in rows:
                    check_wired(label, rows[label], rows["fp32"])
                print(dataset, label, {k: v for k, v in rows[label].items() if k != "runs"})
            results[dataset] = rows
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
