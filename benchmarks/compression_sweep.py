"""Accuracy against total bytes (up + down, every round) for compressed updates (issue 15).

Runs ``fedpeft run`` for every variant × dataset × seed (Dirichlet 0.5, the default 12
rounds) and reports the final dev accuracy against the bytes the run's ``metrics.jsonl``
counted (``len(payload)`` of every message both ways). Variants:

- ``fp32``: today (nothing compressed);
- ``b bits`` (16, 8, 4, 2), with and without error feedback: ``bits_up = bits_down = b``;
- ``top-k`` 10 % and 1 % (float32 values, error feedback) up, 8 bits down;
- ``adaptive``: ``bits_up = "adaptive"`` on the mixed-tier federation (simulated devices,
  30/40/30 % high/mid/low), 8 bits down.

``--report FILE ...`` prints a table per dataset over several results files (seeds run
as separate processes), the differences to fp32 paired by seed.

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


def _by_seed(path: Path) -> dict[str, dict[str, dict[int, tuple[float, float]]]]:
    """``{dataset: {variant: {seed: (final accuracy, total bytes)}}}`` from one results file:
    this script's (``setup.seeds`` and each variant's ``runs`` in that order) or the merged
    form of the first SST-2 sweep (``variants``: accuracies keyed by seed)."""
    raw = json.loads(path.read_text())
    if "variants" in raw:
        dataset = raw["setup"].get("dataset", "sst2")
        return {
            dataset: {
                label: {
                    int(k): (acc, row["total_bytes"]) for k, acc in row["final_accuracy"].items()
                }
                for label, row in raw["variants"].items()
            }
        }
    seeds = raw["setup"]["seeds"]
    return {
        dataset: {
            label: {
                seed: (run["final_accuracy"], run["total_bytes"])
                for seed, run in zip(seeds, row["runs"], strict=True)
            }
            for label, row in rows.items()
        }
        for dataset, rows in raw.items()
        if dataset != "setup"
    }


def report(paths: list[Path], plot_to: Path | None = None) -> None:
    """A Markdown table per dataset over every file's runs: accuracy per seed, mean ± std,
    the difference to fp32 paired by seed, bytes and the ratio to fp32's; with ``plot_to``
    also the merged means drawn (accuracy against bytes, one panel a dataset)."""
    merged: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for path in paths:
        for dataset, rows in _by_seed(path).items():
            for label, seeds in rows.items():
                merged.setdefault(dataset, {}).setdefault(label, {}).update(seeds)
    order = list(variants())
    drawn: dict[str, dict[str, Any]] = {}
    for dataset, rows in merged.items():
        fp32 = rows.get("fp32", {})
        print(f"\n**{dataset}**\n")
        print(
            "| variant | final accuracy, seeds 0, 1, 2 | mean ± std | paired difference to fp32, "
            "points (mean ± std) | bytes, up + down, all rounds | × fewer than fp32 |\n"
            "| --- | --- | ---: | ---: | ---: | ---: |"
        )
        base = statistics.mean(b for _, b in fp32.values()) if fp32 else None
        for label in sorted(rows, key=order.index):
            runs = rows[label]
            accs = [runs[s][0] if s in runs else None for s in (0, 1, 2)]
            got = [a for a in accs if a is not None]
            diffs = [100 * (runs[s][0] - fp32[s][0]) for s in runs if s in fp32]
            nbytes = statistics.mean(b for _, b in runs.values())
            cells = ", ".join("—" if a is None else f"{a:.4g}" for a in accs)
            spread = f" ± {statistics.stdev(got):.3f}" if len(got) > 1 else ""
            paired = "—"
            if label != "fp32" and diffs:
                paired = f"{statistics.mean(diffs):+.2f}"
                paired += f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
                paired += f" ({len(diffs)} seeds)"
            ratio = f"{base / nbytes:.2f}" if base else "—"
            every = [a for a, _ in runs.values()]
            drawn.setdefault(dataset, {})[label] = {
                "total_bytes_mean": nbytes,
                "final_accuracy_mean": statistics.mean(every),
                "final_accuracy_std": statistics.stdev(every) if len(every) > 1 else 0.0,
            }
            print(
                f"| {label} | {cells} | {statistics.mean(got):.3f}{spread} | {paired} "
                f"| {nbytes:,.0f} | {ratio} |"
            )
    if plot_to is not None:
        plot(drawn, plot_to)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", nargs="+", type=Path, help="print the tables of these results")
    ap.add_argument("--plot", type=Path, help="with --report: draw the merged means here")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--datasets", nargs="+", default=["sst2", "ag_news"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run (scale)")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.plot)
        return
    if args.out is None:
        ap.error("--out is required (or --report FILE ...)")
    chosen = {k: v for k, v in variants().items() if not args.only or k in args.only}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            rows: dict[str, Any] = {}
            for label, sets in chosen.items():
                runs = []
                for seed in args.seeds:
                    base = [f"data.dataset='{dataset}'", "data.partition='dirichlet'", *args.set]
                    tag = "".join(ch if ch.isalnum() else "-" for ch in f"{dataset}-{label}-{seed}")
                    runs.append(one_run(Path(tmp), tag, [*base, f"run.seed={seed}", *sets]))
                rows[label] = summarise(runs)
                if "fp32" in rows:
                    check_wired(label, rows[label], rows["fp32"])
                print(dataset, label, {k: v for k, v in rows[label].items() if k != "runs"})
                results[dataset] = rows  # written after every variant: partial runs survive
                meta = {"set": args.set, "seeds": args.seeds}
                args.out.write_text(json.dumps({"setup": meta, **results}, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
