"""The framework's own time per round (wall − clients' round trips − evaluation), two source
trees side by side: the same job alternately under ``--before`` and ``--after`` (each a
``src`` folder put first on ``PYTHONPATH``), interleaved over ``--repeats`` so that the
machine's load hits both alike. Prints and saves per-round overheads and their medians.

    python benchmarks/overhead_ab.py --before /path/to/old/src --after src --repeats 2 \\
        --out benchmarks/results/overhead_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JOB = [  # issue 19's scaling job at 1,000 clients (100 a round), three rounds, eval at the last
    "run.threads=1",
    "run.rounds=3",
    "data.train_size=2000",
    "data.partition='iid'",
    "data.eval_size=100",
    "eval.every=3",
    "server.fraction=0.1",
    "data.num_clients=1000",
]
POOLS = {"sequential": ["run.workers=1"], "forked": []}


def one(src: str, sets: list[str], tag: str, out: Path) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run"]
    for s in [*sets, f"run.output_dir='{out}'", f"run.name='{tag}'"]:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} failed: {(proc.stderr or proc.stdout)[-2000:]}")
    run_dir = sorted(out.glob(f"{tag}-*"))[-1]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {
            "overhead_s": r["wall_time_s"] - r["fit_time_s"] - r["eval_time_s"],
            "wall_s": r["wall_time_s"],
        }
        for r in rows
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the old tree's src folder")
    ap.add_argument("--after", required=True, help="the new tree's src folder")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    trees = {"before": args.before, "after": args.after}
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for pool, extra in POOLS.items():
                for name, src in trees.items():
                    key = f"{name}/{pool}"
                    got = one(src, JOB + extra, f"{name}-{pool}-{rep}", Path(tmp))
                    rounds.setdefault(key, []).extend(got)
                    print(key, [round(r["overhead_s"], 3) for r in got], flush=True)
    summary: dict[str, object] = {"job": JOB, "load1": os.getloadavg()[0]}
    for key, rs in rounds.items():
        over = statistics.median(r["overhead_s"] for r in rs)
        share = statistics.median(r["overhead_s"] / r["wall_s"] for r in rs)
        summary[key] = {"median_overhead_s": over, "median_share": share, "rounds": rs}
        print(f"{key}: {over:.3f} s, {100 * share:.2f} % of a round")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
