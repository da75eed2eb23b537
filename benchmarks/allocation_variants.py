"""Paired table of allocation variants against a reference policy (issue 13).

Each input is ``LABEL=FILE[:POLICY]``: an ``allocation_study.py`` result and the policy in it
(default ``utility``). Runs are paired by seed against ``--reference`` (``LABEL=FILE:POLICY``);
the seeds a row and the reference share are the ones compared.

    python benchmarks/allocation_variants.py \\
        --reference "uniform_fit=benchmarks/results/allocation_1k_agnews_natural.json:uniform_fit" \\
        "utility=benchmarks/results/allocation_1k_agnews_natural.json" \\
        "utility, partial_keys='all'=benchmarks/results/allocation_1k_dilute_agnews_natural.json"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def runs(spec: str) -> tuple[str, dict[str, dict[str, Any]]]:
    label, _, rest = spec.rpartition("=")
    if not label:
        raise SystemExit(f"expected LABEL=FILE[:POLICY], got {spec!r}")
    path, _, policy = rest.partition(":")
    data = json.loads(Path(path).read_text())
    policy = policy or "utility"
    if policy not in data["runs"]:
        raise SystemExit(f"{path} has no policy {policy!r} (it has {sorted(data['runs'])})")
    return label, data["runs"][policy]


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "—"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("rows", nargs="+")
    args = ap.parse_args()
    ref_label, ref = runs(args.reference)
    print(
        "| run | final accuracy per seed | mean ± std | paired − "
        f"`{ref_label}` (points) | MB up | simulated time |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for spec in [args.reference, *args.rows]:
        label, got = runs(spec)
        seeds = sorted(got, key=int)
        finals = [got[s]["accuracy"][-1] for s in seeds]
        diffs = [100 * (got[s]["accuracy"][-1] - ref[s]["accuracy"][-1]) for s in seeds if s in ref]
        paired = (
            "—"
            if spec == args.reference
            else ", ".join(f"{d:+.1f}" for d in diffs) + f" (mean {statistics.mean(diffs):+.1f})"
        )
        mb = statistics.mean(got[s]["bytes_up"] for s in seeds) / 1e6
        clock = statistics.mean(got[s]["sim_clock_s"][-1] for s in seeds)
        per_seed = ", ".join(f"{f:.3f}" for f in finals)
        print(
            f"| {label} | {per_seed} (seeds {', '.join(seeds)}) | {mean_std(finals)} | {paired} "
            f"| {mb:.2f} | {clock:.0f} s |"
        )


if __name__ == "__main__":
    main()
