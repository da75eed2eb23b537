"""Peak memory of the in-process runtime with 10 vs 100 clients over the same data.

Each setting runs `fedpeft run` in its own process (so peak RSS is that run's alone),
`--repeats` times, and reports the median peak RSS and wall time from summary.json.

    .venv/bin/python benchmarks/memory_clients.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import read_run, run_fedpeft


def one_run(num_clients: int, out: Path, extra: list[str]) -> dict[str, float]:
    sets = [f"data.num_clients={num_clients}", "run.rounds=1", *extra]
    s, _ = read_run(run_fedpeft(out, f"mem{num_clients}", sets))
    return {
        "peak_rss_mib": s["peak_rss_bytes"] / 2**20,
        "wall_s": s["wall_time_s"],
        "accuracy": s["final_accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--set", dest="sets", action="append", default=["data.partition='iid'"])
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            runs = [one_run(n, Path(tmp), args.sets) for _ in range(args.repeats)]
            results[n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results[n]["all_peak_rss_mib"] = [round(r["peak_rss_mib"], 1) for r in runs]
            print(n, results[n], flush=True)
    lo, hi = (results[n]["peak_rss_mib"] for n in args.clients[:2])
    print(json.dumps({"results": results, "relative_difference": (hi - lo) / lo}, indent=2))


if __name__ == "__main__":
    main()
