"""Measures the capacity prior of R (``κ = cov^a · ρ^b``, ``fedpeft.allocation.gain``).

Trains each LoRA configuration of a rank × depth grid (and the head alone) on one client
holding all the data (IID, so only capacity differs), for a few epochs, on several
datasets, and fits ``a`` (depth) and ``b`` (rank) by least squares on

    log κ_obs = a·log cov + b·log ρ,   κ_obs = (acc − 1/K) / (acc_best − 1/K)

with ``1/K`` chance accuracy. Writes ``--out`` (JSON: every accuracy and the fit).

    PYTHONPATH=src .venv/bin/python benchmarks/capacity_prior.py \
        --out benchmarks/results/capacity_prior.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import read_run, run_fedpeft

BASE = [
    "data.num_clients=1",
    "data.partition='iid'",
    "data.train_size=800",
    "data.eval_size=400",
    "model.max_length=48",
    "run.rounds=2",
    "run.threads=1",
]
DATASETS = {"sst2": 2, "ag_news": 4}
LAYERS = 6  # all-MiniLM-L6-v2
GRID = [(r, k) for r in (4, 16) for k in (6, 3, 1)]


def variants() -> dict[str, list[str]]:
    out = {"head": ["peft.method='head'"]}
    for r, k in GRID:
        layers = list(range(LAYERS - k, LAYERS))
        out[f"r{r}-top{k}"] = [f"peft.r={r}", f"peft.alpha={2 * r}", f"peft.layers={layers}"]
    return out


def coverage_rank(label: str) -> tuple[float, float]:
    """(cov, ρ) of a variant: blocks + head over L + 1; log₂(1+r)/log₂(17)."""
    if label == "head":
        return 1 / (LAYERS + 1), 1.0
    r, k = label[1:].split("-top")
    return (int(k) + 1) / (LAYERS + 1), math.log2(1 + int(r)) / math.log2(17)


def fit(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Least squares over every (dataset, LoRA configuration): the catalogue is LoRA, and
    the head alone (far below every LoRA) would set the depth exponent by itself."""
    rows, ys = [], []
    for dataset, accs in results.items():
        chance = 1 / DATASETS[dataset]
        best = max(accs.values())
        for label, acc in accs.items():
            kappa = (acc - chance) / (best - chance)
            if kappa > 0 and label != "head":
                cov, rho = coverage_rank(label)
                rows.append([math.log(cov), math.log(rho)])
                ys.append(math.log(kappa))
    (a, b), *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)
    return {"depth_exponent": round(float(a), 3), "rank_exponent": round(float(b), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--refit", action="store_true", help="only refit the accuracies in --out")
    args = ap.parse_args()
    if args.refit:
        record = json.loads(args.out.read_text())
        record["fit"] = fit(record["accuracy"])
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record["fit"]))
        return
    jobs = [(d, label, sets) for d in DATASETS for label, sets in variants().items()]
    with tempfile.TemporaryDirectory() as tmp:

        def one(job: tuple[str, str, list[str]]) -> tuple[str, str, float]:
            dataset, label, sets = job
            tag = f"{dataset}-{label}"
            run = run_fedpeft(Path(tmp), tag, [*BASE, f"data.dataset='{dataset}'", *sets])
            _, rounds = read_run(run)
            print(tag, rounds[-1]["eval"]["accuracy"], flush=True)
            return dataset, label, rounds[-1]["eval"]["accuracy"]

        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(one, jobs))
    results: dict[str, dict[str, float]] = {}
    for dataset, label, acc in done:
        results.setdefault(dataset, {})[label] = acc
    record = {"base": BASE, "accuracy": results, "fit": fit(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["fit"]))


if __name__ == "__main__":
    main()
