"""The embedded default run, repeated: accuracy, bytes, time per round, overhead, memory.

Each repeat is a fresh `fedpeft run` process (so its peak RSS is its own). Prints the
medians as JSON; BENCHMARKS.md quotes them.

    .venv/bin/python benchmarks/default_run.py --repeats 3 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import read_run, run_fedpeft


def one_run(out: Path, sets: list[str], tag: str) -> dict[str, float]:
    start = time.perf_counter()
    run_dir = run_fedpeft(out, tag, sets)
    process_s = time.perf_counter() - start
    s, rounds = read_run(run_dir)
    per_round = [r["wall_time_s"] for r in rounds]
    overhead = [r["wall_time_s"] - r["client_time_s"] - r["eval_time_s"] for r in rounds]
    return {
        "final_accuracy": s["final_accuracy"],
        "final_macro_f1": s["final_macro_f1"],
        "bytes_up_per_client_round": s["bytes_up_per_client_round"],
        "full_model_bytes": s["full_model_bytes"],
        "up_fraction_of_full_model": s["up_fraction_of_full_model"],
        "process_wall_s": process_s,
        "median_round_s": statistics.median(per_round),
        "median_eval_s": statistics.median(r["eval_time_s"] for r in rounds),
        "median_overhead_s": statistics.median(overhead),
        "peak_rss_mib": s["peak_rss_bytes"] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i in range(args.repeats):
            runs.append(one_run(Path(tmp), args.sets, f"bench{i}"))
            print(json.dumps(runs[-1]), flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"repeats": args.repeats, "sets": args.sets, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
