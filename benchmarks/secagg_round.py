"""Secure aggregation in the real round loop: the same federation with and without
``privacy.secure_aggregation``, bytes and seconds per round (issue 17).

    PYTHONPATH=src .venv/bin/python benchmarks/secagg_round.py \
        --out benchmarks/results/secagg_round.json [--set key=value ...]

Defaults: MiniLM-L6 (the default model) with LoRA r=8 on SST-2, 10 clients, 2 rounds,
one client at a time (``run.workers=1``), one thread. Prints one row per variant and
round, and the with/without ratios of bytes up, bytes down, fit seconds and round wall
seconds (averaged over the rounds), and the final accuracy and max |Δθ| between the two
final globals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fedpeft.config import load_config
from fedpeft.runtime.local import run_local

BASE = [
    "data.num_clients=10",
    "run.rounds=2",
    "data.train_size=1000",
    "data.eval_size=200",
    "run.workers=1",
    "run.threads=1",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    out: dict[str, object] = {"overrides": BASE + args.sets}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("plain", []), ("secure", ["privacy.secure_aggregation=true"])):
            where = [f"run.output_dir={tmp!r}", f"run.name={name!r}"]
            cfg = load_config(overrides=[*BASE, *args.sets, *extra, *where])
            results[name] = run_local(cfg)
    rows = []
    for name, result in results.items():
        for r in result.rounds:
            row = {
                "variant": name,
                "round": r["round"],
                "bytes_up": r["bytes_up"],
                "bytes_down": r["bytes_down"],
                "fit_time_s": round(r["fit_time_s"], 3),
                "wall_time_s": round(r["wall_time_s"], 3),
                "accuracy": r["eval"].get("accuracy"),
            }
            info = r.get("secure_aggregation")
            if isinstance(info, dict):
                row["secagg_server_s"] = round(sum(info["server_s"].values()), 4)
                row["secagg_wait_s"] = {k: round(v, 3) for k, v in info["wait_s"].items()}
            rows.append(row)
            print(json.dumps(row))

    def mean(name: str, key: str) -> float:
        values = [float(r[key]) for r in rows if r["variant"] == name]
        return sum(values) / len(values)

    ratios = {
        key: round(mean("secure", key) / mean("plain", key), 3)
        for key in ("bytes_up", "bytes_down", "fit_time_s", "wall_time_s")
    }
    plain, secure = results["plain"].state, results["secure"].state
    diff = max(float((plain[k].double() - secure[k].double()).abs().max()) for k in plain)
    out |= {"rows": rows, "ratios": ratios, "max_abs_global_difference": diff}
    print(json.dumps({"ratios": ratios, "max_abs_global_difference": diff}))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
