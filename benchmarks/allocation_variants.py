"""Paired table of allocation variants against a reference policy (issue 13).

Each input is ``LABEL=FILE[+FILE…][:POLICY]``: ``allocation_study.py`` results (several files:
more seeds of one setting) and the policy in them (default ``utility``). Runs are paired by
seed against ``--reference`` (same form); the seeds a row and the reference share are the
ones compared. The target is 95 % of the
best mean final accuracy in the table; "to target" is the mean simulated time of the seeds
that reach it.

    python benchmarks/allocation_variants.py \\
        --reference "uniform_fit=$R/allocation_1k_agnews_natural.json:uniform_fit" \\
        "utility=$R/allocation_1k_agnews_natural.json" \\
        "utility, partial_keys all=$R/allocation_1k_dilute_agnews_natural.json"

(``R=benchmarks/results``)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from allocation_report import mean_std, participation, time_to
from allocation_study import mean_curve
from common import plot_against_clock


def runs(spec: str) -> tuple[str, dict[str, dict[str, Any]]]:
    label, _, rest = spec.rpartition("=")
    if not label:
        raise SystemExit(f"expected LABEL=FILE[:POLICY], got {spec!r}")
    paths, _, policy = rest.partition(":")
    policy = policy or "utility"
    out: dict[str, dict[str, Any]] = {}
    for path in paths.split("+"):  # more seeds of the same setting in another file
        data = json.loads(Path(path).read_text())
        if policy not in data["runs"]:
            raise SystemExit(f"{path} has no policy {policy!r} (it has {sorted(data['runs'])})")
        out |= {s: r for s, r in data["runs"][policy].items() if "accuracy" in r}
    return label, out


def last2(run: dict[str, Any]) -> float:
    """The mean accuracy of the last two rounds: less at the mercy of one round's swing."""
    return statistics.mean(run["accuracy"][-2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--plot", type=Path, help="also a PNG: mean accuracy against simulated time")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    ref_label, ref = runs(args.reference)
    table = [runs(spec) for spec in [args.reference, *args.rows]]
    best = max(statistics.mean(r["accuracy"][-1] for r in got.values()) for _, got in table)
    target = 0.95 * best
    print(
        "| run | final accuracy per seed | mean ± std | paired − "
        f"`{ref_label}` (points) | last two rounds' mean, paired (points) | MB up "
        f"| simulated time | to {target:.3f} (seeds) | trained / sampled: high · mid · low |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for spec, (label, got) in zip([args.reference, *args.rows], table, strict=True):
        seeds = sorted(got, key=int)
        finals = [got[s]["accuracy"][-1] for s in seeds]
        diffs = [100 * (got[s]["accuracy"][-1] - ref[s]["accuracy"][-1]) for s in seeds if s in ref]
        paired = (
            "—"
            if spec == args.reference
            else ", ".join(f"{d:+.1f}" for d in diffs) + f" (mean {statistics.mean(diffs):+.1f})"
        )
        tail = [100 * (last2(got[s]) - last2(ref[s])) for s in seeds if s in ref]
        smooth = "—" if spec == args.reference else f"{statistics.mean(tail):+.1f}"
        mb = statistics.mean(got[s]["bytes_up"] for s in seeds) / 1e6
        clock = statistics.mean(got[s]["sim_clock_s"][-1] for s in seeds)
        per_seed = ", ".join(f"{f:.3f}" for f in finals)
        reach = [time_to(got[s], target) for s in seeds]
        hit = [t for t in reach if t is not None]
        to = f"{statistics.mean(hit):.0f} s" if hit else "—"
        to += f" ({len(hit)}/{len(seeds)})"
        print(
            f"| {label} | {per_seed} (seeds {', '.join(seeds)}) | {mean_std(finals)} | {paired} "
            f"| {smooth} | {mb:.2f} | {clock:.0f} s | {to} | {participation(got)} |"
        )
    if args.plot:
        curves = {label: mean_curve(list(got.values())) for label, got in table}
        plot_against_clock(curves, args.plot, target, args.title or "mean over seeds")


if __name__ == "__main__":
    main()
