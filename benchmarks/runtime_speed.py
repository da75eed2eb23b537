"""The in-process runtime's speed, side by side: variants of one job in fresh processes,
interleaved over ``--repeats`` so that changes in the machine's load hit every variant.

Per variant (medians over repeats): seconds per round, of which the clients' round trips
(``fit_time_s``), central evaluation and the framework's own overhead (the rest); CPU
seconds of the whole process tree (server and forked workers); peak PSS of the tree
(shared pages, such as the one base model the workers share, count once); final accuracy.
Ratios are against the first variant. The 1-minute load average is printed with each run.

    PYTHONPATH=src .venv/bin/python benchmarks/runtime_speed.py --repeats 2 \\
        --base "run.rounds=2" \\
        --variant "sequential=run.workers=1" --variant "parallel=run.workers=0"

``--base`` and each variant's ``;``-separated settings are ``--set`` overrides, except
``compete=N``: N CPU-bound busy loops run beside that variant (each in its own session, as
another user's job would), to measure the slowdown under competition; and
``runtime=NAME``: ``fedpeft run --runtime NAME`` (e.g. ``flower-sim``, whose Ray processes
count in the tree's CPU and memory like forked workers do); and ``env.NAME=VALUE``: an
environment variable of that variant's process (e.g. ``env.LRU_CACHE_CAPACITY=1024``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import TreeMemory, emit, read_run


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


BUSY = "while True: pass"
SPECIAL = ("compete=", "runtime=", "env.")  # not ``--set`` overrides


def one_run(out: Path, tag: str, sets: list[str]) -> dict[str, Any]:
    special = dict(s.split("=", 1) for s in sets if s.startswith(SPECIAL))
    compete = int(special.get("compete", 0))
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run",
           "--runtime", special.get("runtime", "local"),
           "--set", f"run.output_dir='{out}'", "--set", f"run.name='{tag}'"]  # fmt: skip
    for s in sets:
        if not s.startswith(SPECIAL):
            cmd += ["--set", s]
    # Ray's memory monitor kills workers when the whole machine is above 95 % of its memory,
    # other users' processes included: off, so a shared machine does not fail the variant
    env = dict(os.environ, RAY_memory_monitor_refresh_ms="0")
    env |= {k.removeprefix("env."): v for k, v in special.items() if k.startswith("env.")}
    busy = [subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
            for _ in range(compete)]  # fmt: skip
    try:
        load, cpu0, t0 = os.getloadavg()[0], children_cpu_s(), time.perf_counter()
        with TreeMemory(interval=0.5) as mem:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    finally:
        for b in busy:
            b.kill()
            b.wait()
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise RuntimeError(f"{tag} failed with exit code {proc.returncode}: {tail}")
    summary, rounds = read_run(sorted(out.glob(f"{tag}-*"))[-1])
    per = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    over = [r["wall_time_s"] - r["fit_time_s"] - r["eval_time_s"] for r in rounds]
    return {
        "load1_at_start": load,
        "process_wall_s": wall,
        "tree_cpu_s": cpu,
        "peak_pss_mib": mem.peak / 2**20,
        "median_round_s": per("wall_time_s"),
        "median_fit_s": per("fit_time_s"),
        "median_eval_s": per("eval_time_s"),
        "median_overhead_s": statistics.median(over),
        "overhead_share": statistics.median(
            o / r["wall_time_s"] for o, r in zip(over, rounds, strict=True)
        ),
        "client_train_s_summed": per("client_time_s"),
        "updates_per_s": statistics.median(r["accepted"] / r["wall_time_s"] for r in rounds),
        "updates_per_fit_s": statistics.median(
            r["accepted"] / max(r["fit_time_s"], 1e-9) for r in rounds
        ),
        "final_accuracy": summary["final_accuracy"],
        "accuracy_per_round": [r["eval"].get("accuracy") for r in rounds],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--base", default="", help="';'-separated --set overrides for every run")
    ap.add_argument("--variant", action="append", required=True, help="name=k=v;k=v")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    base = [s for s in args.base.split(";") if s]
    variants = {}
    for v in args.variant:
        name, _, sets = v.partition("=")
        variants[name] = base + [s for s in sets.split(";") if s]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, sets in variants.items():
                try:
                    row = one_run(Path(tmp), f"{name}{rep}", sets)
                except RuntimeError as e:  # one failed run (e.g. killed) leaves the others
                    print(json.dumps({"variant": name, "repeat": rep, "error": str(e)}))
                    continue
                runs[name].append(row)
                print(json.dumps({"variant": name, "repeat": rep, **row}), flush=True)
    first = next(iter(variants))
    result: dict[str, Any] = {"repeats": args.repeats, "cpus": os.cpu_count(), "variants": {}}
    for name, rows in runs.items():
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "accuracy_per_round"]
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        med["accuracy_per_round"] = rows[-1]["accuracy_per_round"]
        if runs[first]:
            ref = statistics.median(r["median_round_s"] for r in runs[first])
            med["round_speedup_vs_" + first] = ref / med["median_round_s"]
        result["variants"][name] = {"sets": variants[name], "median": med}
    emit(result, args.out)


if __name__ == "__main__":
    main()
