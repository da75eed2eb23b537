"""One row per setting: the default ``utility`` policy against every other policy run in the
same harness (issue 13), from ``allocation_study.py`` result files named in a TOML manifest
(``benchmarks/allocation_summary.toml``).

    python benchmarks/allocation_summary.py benchmarks/allocation_summary.toml

Per setting: each policy's mean final accuracy over its seeds; the best other policy (not
``unconstrained``, which ignores the devices' limits: the upper bound, shown apart);
``utility`` − that policy paired on the seeds both ran; the simulated time to a target (95 %
of the best mean but ``unconstrained``'s), for ``utility`` and the fastest other policy, as
the mean over the seeds that reach it; the megabytes sent up per run.
"""

from __future__ import annotations

import argparse
import statistics
import tomllib
from pathlib import Path
from typing import Any

from allocation_report import finals, mean_std, time_to
from allocation_variants import runs

RESULTS = Path(__file__).parent / "results"
Runs = dict[str, dict[str, Any]]


def load(policy: str, spec: str) -> Runs | None:
    """The runs of ``spec`` (files under benchmarks/results), or None when a file is missing."""
    paths, _, name = spec.partition(":")
    files = [RESULTS / p for p in paths.split("+")]
    if not all(f.exists() for f in files):
        return None
    return runs(f"{policy}={'+'.join(map(str, files))}:{name or 'utility'}")[1]


def final(got: Runs) -> float:
    return statistics.mean(finals(got))


def reach(got: Runs, target: float) -> tuple[float | None, int]:
    hit = [t for r in got.values() if (t := time_to(r, target)) is not None]
    return (statistics.mean(hit) if hit else None), len(hit)


def row(name: str, table: dict[str, Runs]) -> tuple[str, float, bool]:
    mine = table["utility"]
    others = {p: g for p, g in table.items() if p not in ("utility", "unconstrained")}
    best = max(others, key=lambda p: final(others[p]))
    shared = sorted(set(mine) & set(others[best]), key=int)
    gap = statistics.mean(
        100 * (mine[s]["accuracy"][-1] - others[best][s]["accuracy"][-1]) for s in shared
    )
    target = 0.95 * max(final(g) for p, g in table.items() if p != "unconstrained")
    t_mine, n_mine = reach(mine, target)
    timed = {p: reach(g, target) for p, g in others.items()}
    fastest = min(
        (p for p in timed if timed[p][0] is not None),
        key=lambda p: (-timed[p][1], timed[p][0]),  # more seeds reach it first, then sooner
        default=None,
    )

    def clock(t: float | None, n: int, k: int) -> str:
        return "—" if t is None else f"{t:.0f} s ({n}/{k})"

    fast = "—"
    if fastest is not None:
        fast = f"`{fastest}` " + clock(*timed[fastest], len(others[fastest]))
    mb = statistics.mean(r["bytes_up"] for r in mine.values()) / 1e6
    mb_best = statistics.mean(r["bytes_up"] for r in others[best].values()) / 1e6
    cap = table.get("unconstrained")
    upper = "—" if cap is None else mean_std(finals(cap))
    cells = [
        name,
        ", ".join(sorted(mine, key=int)),
        mean_std(finals(mine)),
        mean_std(finals(table["uniform_fit"])),
        f"`{best}` " + mean_std(finals(others[best])),
        f"{gap:+.1f} ({len(shared)} seeds)",
        clock(t_mine, n_mine, len(mine)) + " · " + fast,
        f"{mb:.1f} · {mb_best:.1f}",
        upper,
        ", ".join(f"`{p}`" for p in table if p != "utility"),
    ]
    return "| " + " | ".join(cells) + " |", gap, final(mine) >= final(others[best])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    args = ap.parse_args()
    settings = tomllib.loads(args.manifest.read_text(encoding="utf-8"))["setting"]
    print(
        "| setting | seeds | `utility` (default) | `uniform_fit` | best other policy | "
        "`utility` − best other, paired (points) | to 95 % of the best mean: `utility` · "
        "fastest other | MB up: `utility` · best other | `unconstrained` (limits ignored) | "
        "policies run |"
    )
    print("| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |")
    gaps, wins, missing = [], 0, []
    behind: dict[str, list[float]] = {}  # policy → points behind each setting's best mean
    for s in settings:
        name = s.pop("name")
        table = {p: load(p, spec) for p, spec in s.items()}
        missing += [f"{name}: {p}" for p, got in table.items() if got is None]
        ran = {p: g for p, g in table.items() if g is not None}
        line, gap, won = row(name, ran)
        print(line)
        gaps.append(gap)
        wins += won
        top = max(final(g) for p, g in ran.items() if p != "unconstrained")
        for p, g in ran.items():
            if p != "unconstrained":
                behind.setdefault(p, []).append(100 * (final(g) - top))
    print(
        f"\n`utility`'s mean is the highest in {wins} of {len(gaps)} settings; "
        f"`utility` − best other policy, mean over the settings: "
        f"{statistics.mean(gaps):+.2f} points."
    )
    print(
        "\n| policy | settings run | best in | "
        "behind the setting's best mean: mean · worst (points) |"
    )
    print("| --- | ---: | ---: | ---: |")
    for p, pts in sorted(behind.items(), key=lambda kv: statistics.mean(kv[1]), reverse=True):
        firsts = sum(x == 0 for x in pts)
        print(f"| `{p}` | {len(pts)} | {firsts} | {statistics.mean(pts):+.1f} · {min(pts):+.1f} |")
    if missing:
        print("Not run yet (left out above): " + "; ".join(missing) + ".")


if __name__ == "__main__":
    main()
