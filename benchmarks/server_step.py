"""Which server step makes a federated round do a round's worth of work? (issue 12)

With 10 clients, one local epoch is ~1/10 of the data per client, so FedAvg of ten short
local runs moves the global about one client's worth of steps per round while a
centralised epoch takes ten times as many. This grid compares, with every other default
left alone, arms that change only the server's step (or the client's step size):

    fedavg    the default: θ ← mean of the clients' adapters
    avgm      FedAvgM, server_lr 1, momentum 0.9 (Hsu et al. 2019)
    slr3      a plain server step of 3 on the averaged delta (FedAvgM, momentum 0)
    scaffold  SCAFFOLD control variates (server.aggregator = "scaffold")
    lr1e2     client lr 1e-2 instead of 3e-3
    b8        client batch 8 instead of 16 (twice the local steps for the same examples)
    la        logit adjustment in local training (``client.label_skew = "logit_adjust"``)
    refresh   the head set again from the clients' statistics after the last round
              (``server.head_refresh = "last"``, CCVR-style re-calibration)
    refresh_every  the same after every round

over datasets × Dirichlet α × seeds, plus the centralised reference (one client, the same
examples and epochs, LDA head). Runs go two at a time (one torch thread each) and every
finished run is written to ``--out`` at once, so an interrupted grid resumes where it
stopped.

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/server_step.py \
        --out benchmarks/results/accuracy/server_step.json \
        --dataset sst2 --dataset trec --dataset ag_news --dataset 20newsgroups \
        --alpha 0.5 --seed 0 --seed 1 --set data.train_size=600 --set data.eval_size=400 \
        --set run.rounds=5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fed_vs_central import CENTRAL, EVAL_SIZE
from sweep import run_variant

ARMS: dict[str, list[str]] = {
    "fedavg": [],
    "avgm": ["server.optimizer='fedavgm'", "server.server_lr=1.0", "server.momentum=0.9"],
    "slr3": ["server.optimizer='fedavgm'", "server.server_lr=3.0", "server.momentum=0.0"],
    "scaffold": ["server.aggregator='scaffold'"],
    "lr1e2": ["client.lr=0.01"],
    "b8": ["client.batch_size=8"],
    "la": ["client.label_skew='logit_adjust'"],
    "refresh": ["server.head_refresh='last'"],
    "refresh_every": ["server.head_refresh='every'"],
}
FIXED = ["run.workers=1", "run.threads=1"]


def grid(
    datasets: list[str], alphas: list[float], seeds: list[int], arms: list[str], extra: list[str]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for seed in seeds:
        for dataset in datasets:
            base = [f"data.dataset='{dataset}'", f"run.seed={seed}", *FIXED]
            if dataset in EVAL_SIZE:
                base.append(f"data.eval_size={EVAL_SIZE[dataset]}")
            base += extra
            for a in alphas:
                for arm in arms:
                    out[f"{dataset}/dir{a}/{arm}/seed{seed}"] = [
                        *base,
                        f"data.alpha={a}",
                        *ARMS[arm],
                    ]
            out[f"{dataset}/central/-/seed{seed}"] = [
                *base,
                *CENTRAL,
                "server.head_init='lda'",
            ]
    return out


def summary(results: dict[str, dict[str, object]]) -> dict[str, dict[str, float]]:
    """Mean ± std final accuracy per (dataset, split, arm) and the gap to centralised
    (paired by seed where both ran)."""
    rows: dict[str, dict[int, float]] = {}
    for key, r in results.items():
        acc = r.get("final_accuracy")
        if not isinstance(acc, float):
            continue
        dataset, split, arm, seed = key.split("/")
        rows.setdefault(f"{dataset}/{split}/{arm}", {})[int(seed[4:])] = acc
    out: dict[str, dict[str, float]] = {}
    for key, by_seed in sorted(rows.items()):
        dataset = key.split("/")[0]
        central = rows.get(f"{dataset}/central/-", {})
        accs = list(by_seed.values())
        entry = {
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": float(len(accs)),
        }
        paired = [central[s] - a for s, a in by_seed.items() if s in central]
        if paired and "/central/" not in key:
            entry["gap"] = statistics.mean(paired)
        out[key] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--alpha", action="append", type=float, required=True)
    ap.add_argument("--seed", action="append", type=int, required=True)
    ap.add_argument("--arm", action="append", choices=sorted(ARMS), default=[])
    ap.add_argument("--set", action="append", default=[], dest="extra")
    ap.add_argument("--runs", type=Path, help="keep the run folders here (default: a temp dir)")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    args = ap.parse_args()
    arms = args.arm or list(ARMS)
    results: dict[str, dict[str, object]] = (
        json.loads(args.out.read_text()).get("runs", {}) if args.out.is_file() else {}
    )
    todo = {
        k: v
        for k, v in grid(args.dataset, args.alpha, args.seed, arms, args.extra).items()
        if "final_accuracy" not in results.get(k, {})
    }
    lock = threading.Lock()
    runs_dir = args.runs or Path(tempfile.mkdtemp(prefix="server_step_"))

    def one(key: str, sets: list[str]) -> None:
        r = run_variant(key.replace("/", "_"), sets, runs_dir)
        with lock:
            results[key] = r
            args.out.write_text(
                json.dumps({"runs": results, "summary": summary(results)}, indent=1) + "\n"
            )
            print(key, r.get("final_accuracy", r.get("error")), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        for f in [pool.submit(one, k, v) for k, v in todo.items()]:
            f.result()
    for key, entry in summary(results).items():
        gap = f"  gap {100 * entry['gap']:+.1f}" if "gap" in entry else ""
        print(f"{key:40s} {entry['mean']:.3f} ± {entry['std']:.3f} (n={entry['seeds']:.0f}){gap}")


if __name__ == "__main__":
    main()
