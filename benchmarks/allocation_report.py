"""Tables for BENCHMARKS.md from ``allocation_study.py``'s JSON files.

Per policy: final accuracy (mean ± sample std over seeds), the simulated time to the target
(the first round at or above it; mean over the seeds that reached it), participation per
tier (client-rounds trained / sampled, all seeds), MB sent up per run, and the local steps
trained. The target of a setting and split is 95 % of the best policy's mean final
accuracy, rounded down to 0.01, so every row is timed to the same bar. Files of the same
setting and split (e.g. seeds run as separate invocations) are merged first; ``--plot``
writes one PNG per setting and split (accuracy against simulated time, mean over seeds).

    python benchmarks/allocation_report.py benchmarks/results/allocation_study_*.json --plot
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

TIERS = ("high", "mid", "low")


def finals(seeds: dict[str, Any]) -> list[float]:
    return [r["accuracy"][-1] for r in seeds.values() if "accuracy" in r]


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def target_of(record: dict[str, Any]) -> float:
    best = max(statistics.mean(f) for s in record["runs"].values() if (f := finals(s)))
    return math.floor(0.95 * best * 100) / 100


def time_to(run: dict[str, Any], target: float) -> float | None:
    pairs = zip(run["accuracy"], run["sim_clock_s"], strict=True)
    return next((t for a, t in pairs if a >= target), None)


def participation(seeds: dict[str, Any]) -> str:
    cells = []
    for tier in TIERS:
        ok = sum(
            r["participation"].get(tier, {}).get("ok", 0)
            for r in seeds.values()
            if "participation" in r
        )
        n = sum(
            r["participation"].get(tier, {}).get("sampled", 0)
            for r in seeds.values()
            if "participation" in r
        )
        other: dict[str, int] = {}  # why the rest did not train: offline, refused, ...
        for r in seeds.values():
            for status, k in r.get("participation", {}).get(tier, {}).items():
                if status not in ("ok", "sampled"):
                    other[status] = other.get(status, 0) + k
        why = ", ".join(f"{k} {v}" for k, v in sorted(other.items()))
        cells.append(f"{ok}/{n}" + (f" ({why})" if why else ""))
    return " · ".join(cells)


def row(policy: str, seeds: dict[str, Any], target: float) -> list[str]:
    runs = [r for r in seeds.values() if "accuracy" in r]
    times = [t for r in runs if (t := time_to(r, target)) is not None]
    reached = (
        f"{statistics.mean(times):.0f} s ({len(times)}/{len(runs)})"
        if times
        else f"— (0/{len(runs)})"
    )
    clock = statistics.mean(r["sim_clock_s"][-1] for r in runs)
    mb = statistics.mean(r["bytes_up"] for r in runs) / 1e6
    steps = statistics.mean(r["local_steps"] for r in runs)
    return [
        f"`{policy}`",
        mean_std(finals(seeds)),
        reached,
        f"{clock:.0f} s",
        participation(seeds),
        f"{mb:.1f}",
        f"{steps:.0f}",
        trained(runs),
    ]


def trained(runs: list[dict[str, Any]]) -> str:
    """Configurations trained, client-rounds over all seeds, most first (``lora-`` dropped)."""
    counts: dict[str, int] = {}
    for r in runs:
        for name, k in r.get("configs", {}).items():
            counts[name.removeprefix("lora-")] = counts.get(name.removeprefix("lora-"), 0) + k
    return ", ".join(f"{n} ×{k}" for n, k in sorted(counts.items(), key=lambda x: -x[1]))


def table(record: dict[str, Any]) -> str:
    target = target_of(record)
    head = [
        "policy",
        "final accuracy (mean ± std)",
        f"sim. time to {target:.2f} (seeds)",
        "sim. time, all rounds",
        "trained / sampled: high · mid · low",
        "MB up",
        "local steps",
        "configurations trained (client-rounds)",
    ]
    order = sorted(record["runs"], key=lambda p: -statistics.mean(finals(record["runs"][p]) or [0]))
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row(p, record["runs"][p], target)) + " |" for p in order]
    title = (
        f"**{record['setting']}, {record['split']}** (seeds {', '.join(map(str, record['seeds']))})"
    )
    return title + "\n\n" + "\n".join(lines)


def merged(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """One record per (setting, split): the union of the files' runs and seeds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(paths):
        record = json.loads(path.read_text())
        key = (record["setting"], record["split"])
        into = out.setdefault(key, {**record, "runs": {}, "seeds": []})
        into["seeds"] = sorted(set(into["seeds"]) | set(record["seeds"]))
        for policy, seeds in record["runs"].items():
            ok = {seed: r for seed, r in seeds.items() if "accuracy" in r}  # failed runs out
            if ok:
                into["runs"].setdefault(policy, {}).update(ok)
    return {key: r for key, r in out.items() if r["runs"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--plot", action="store_true", help="also write one PNG per setting")
    args = ap.parse_args()
    for (setting, split), record in merged(args.files).items():
        print(table(record) + "\n")
        if args.plot:
            from allocation_study import plot

            record["target"] = target_of(record)
            plot(record, args.files[0].parent / f"allocation_study_{setting}_{split}.png")


if __name__ == "__main__":
    main()
