"""Federated (every default left alone) against centralised training on the same examples
for the same number of epochs, per dataset, Dirichlet α and seed.

Centralised is ``data.num_clients=1`` with plain cross-entropy and no server optimiser
(``client.label_skew='none'``, ``server.optimizer='none'``): one client, one epoch a round,
the same rounds, so it sees every example as often as the federation does. It runs twice,
with a random head (``central``) and with the head started at the linear discriminant of the
same features (``central_lda``); the gap is taken to the better of the two. Results
(accuracy and macro-F1 per round, final gap, recall of the rarest train classes) go to
``--out``.

    PYTHONPATH=src .venv/bin/python benchmarks/fed_vs_central.py \
        --out benchmarks/results/accuracy/fed_vs_central.json \
        --dataset sst2 --dataset ag_news --dataset 20newsgroups --dataset banking77 \
        --alpha 0.5 --alpha 0.1 --seed 0 --seed 1 --seed 2 --set run.threads=1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sweep import run_variant

CENTRAL = ["data.num_clients=1", "client.label_skew='none'", "server.optimizer='none'"]
CENTRAL_HEADS = {"central": "random", "central_lda": "lda"}
EVAL_SIZE = {"ag_news": 2000, "20newsgroups": 2000, "banking77": 2000}  # test sets of 3–8k


def runs_for(
    dataset: str, alphas: list[float], seed: int, extra: list[str], heads: list[str] | None = None
) -> dict[str, list[str]]:
    base = [f"data.dataset='{dataset}'", f"run.seed={seed}"]
    if dataset in EVAL_SIZE:
        base.append(f"data.eval_size={EVAL_SIZE[dataset]}")
    base += extra  # after the eval size: --set data.eval_size=… wins
    out = {
        f"{dataset}/{name}/seed{seed}": [*base, *CENTRAL, f"server.head_init='{head}'"]
        for name, head in CENTRAL_HEADS.items()
        if heads is None or name in heads
    }
    for a in alphas:
        out[f"{dataset}/dir{a}/seed{seed}"] = [*base, f"data.alpha={a}"]
    return out


def gaps(results: dict[str, dict[str, object]]) -> dict[str, dict[str, float]]:
    """Mean final accuracy/macro-F1 per (dataset, split) over seeds and the gap to central."""
    table: dict[str, list[tuple[float, float]]] = {}
    for key, r in results.items():
        if "final_accuracy" not in r:
            continue
        dataset, split, _ = key.split("/")
        acc, f1 = r["final_accuracy"], r["final_macro_f1"]
        assert isinstance(acc, float) and isinstance(f1, float)
        table.setdefault(f"{dataset}/{split}", []).append((acc, f1))
    out = {}
    for key, rows in table.items():
        dataset = key.split("/")[0]
        refs = [
            table[f"{dataset}/{name}"] for name in CENTRAL_HEADS if f"{dataset}/{name}" in table
        ]
        acc = statistics.mean(a for a, _ in rows)
        f1 = statistics.mean(f for _, f in rows)
        entry = {"accuracy": acc, "macro_f1": f1, "seeds": float(len(rows))}
        if refs:  # the better centralised run is the reference
            entry["gap_accuracy"] = max(statistics.mean(a for a, _ in r) for r in refs) - acc
            entry["gap_macro_f1"] = max(statistics.mean(f for _, f in r) for r in refs) - f1
        out[key] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--alpha", action="append", type=float, default=[])
    ap.add_argument("--seed", action="append", type=int, default=[])
    ap.add_argument("--set", action="append", default=[], help="applied to every run")
    ap.add_argument("--runs", type=Path, default=Path("runs/fed_vs_central"))
    ap.add_argument("--skip-central", action="store_true")
    ap.add_argument(
        "--central", action="append", choices=sorted(CENTRAL_HEADS), help="default: both"
    )
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for seed in args.seed or [0]:
        for dataset in args.dataset:
            for key, sets in runs_for(
                dataset, args.alpha or [0.5], seed, args.set, args.central
            ).items():
                if key in results and "error" not in results[key]:
                    continue  # resumable: a finished entry is kept
                if args.skip_central and "/central" in key:
                    continue
                results[key] = run_variant(key.replace("/", "_"), sets, args.runs)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
                print(key, json.dumps(results[key]), flush=True)
    summary = gaps(results)
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, entry in sorted(summary.items()):
        print(key, {k: round(v, 4) for k, v in entry.items()})


if __name__ == "__main__":
    main()
