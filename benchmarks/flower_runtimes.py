"""The same job on three runtimes: in-process, Flower simulation, loopback deployment.

Seconds per round (the server's wall time per round), peak memory of all the job's
processes together (proportional set size, sampled every second, so shared pages count
once), and bytes of Flower's serialised messages next to fedpeft's own count.

    .venv/bin/python benchmarks/flower_runtimes.py [--rounds 5] [--clients 10] [--set k=v ...]

Defaults are the issue's job: MiniLM-L6, SST-2, 10 clients, 5 rounds. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import TreeMemory, read_run

from fedpeft.config import config_to_toml, load_config
from fedpeft.runtime.flower.deploy import run_deployed


def _cli_run(runtime: str, out: Path, sets: list[str]) -> Path:
    cmd = [sys.executable, "-m", "fedpeft.cli.main", "run", "--runtime", runtime,
           "--set", f"run.output_dir='{out}'", "--set", f"run.name='{runtime}'"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{runtime} failed: {proc.stderr.strip()[-2000:]}")
    return sorted(out.glob(f"{runtime}-*"))[-1]


def _row(run_dir: Path, wall_s: float, peak: int) -> dict[str, Any]:
    summary, rounds = read_run(run_dir)
    row: dict[str, Any] = {
        "rounds": len(rounds),
        "median_round_s": statistics.median(r["wall_time_s"] for r in rounds),
        "first_round_s": rounds[0]["wall_time_s"],
        "process_wall_s": wall_s,
        "peak_pss_all_processes_mib": peak / 2**20,
        "final_accuracy": summary["final_accuracy"],
        "fedpeft_bytes_down": summary["bytes_down_total"],
        "fedpeft_bytes_up": summary["bytes_up_total"],
    }
    flower = run_dir / "flower.json"
    if flower.is_file():
        stats = json.loads(flower.read_text())
        row |= {k: stats[k] for k in ("wire_bytes_down", "wire_bytes_up")}
        row["model_loads_per_client_process"] = sorted(
            {c["model_loads_in_last_process"] for c in stats["clients"].values()}
        )
        row["client_processes_seen"] = sorted(
            {c["processes_seen"] for c in stats["clients"].values()}
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--runtimes", default="local,flower-sim,deploy")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    sets = [f"run.rounds={args.rounds}", f"data.num_clients={args.clients}", *args.sets]
    results: dict[str, Any] = {"job": sets, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes.split(","):
            out = Path(tmp) / runtime
            start = time.perf_counter()
            if runtime == "deploy":
                overrides = [*sets, f"run.output_dir='{out}'", "run.name='deploy'"]
                cfg = load_config(None, overrides)
                with TreeMemory() as mem:
                    status, run_dir = run_deployed(
                        config_to_toml(cfg), args.clients, Path(tmp) / "work", output_dir=out
                    )
                if run_dir is None or status != "finished:completed":
                    raise RuntimeError(f"deployment ended {status}; logs in {tmp}/work/logs")
            else:
                with TreeMemory() as mem:
                    run_dir = _cli_run(runtime, out, sets)
            results[runtime] = _row(run_dir, time.perf_counter() - start, mem.peak)
            print(json.dumps({runtime: results[runtime]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
