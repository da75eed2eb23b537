"""Runs named variants of one federation and plots accuracy per round for each.

A variant is ``label=key=value;key=value`` (``--set`` overrides applied on top of
``--base`` overrides). Results go to ``--out`` (JSON) and a PNG beside it.

    .venv/bin/python benchmarks/sweep.py --out benchmarks/results/aggregators_dir05.json \
        --base run.rounds=6 --variant "FedAvg=server.aggregator='fedavg'" \
        --variant "FedProx=client.proximal_mu=0.01"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import plot_curves, read_run, run_fedpeft


def run_variant(label: str, sets: list[str], out: Path) -> dict[str, object]:
    tag = "".join(ch if ch.isalnum() else "-" for ch in label)
    try:
        run_dir = run_fedpeft(out, tag, sets)
        s, rounds = read_run(run_dir)
    except RuntimeError as e:
        return {"sets": sets, "error": str(e)}
    return variant_result(run_dir, sets)


def variant_result(run_dir: Path, sets: list[str]) -> dict[str, object]:
    """What a finished run folder shows: accuracy and macro-F1 per round, bytes, time, the
    rarest train classes' recall."""
    s, rounds = read_run(run_dir)
    return {
        "sets": sets,
        # None for a round that was not evaluated (eval.every > 1)
        "accuracy_per_round": [r["eval"].get("accuracy") for r in rounds],
        "macro_f1_per_round": [r["eval"].get("macro_f1") for r in rounds],
        "final_accuracy": s["final_accuracy"],
        "final_macro_f1": s["final_macro_f1"],
        "bytes_up_per_client_round": s["bytes_up_per_client_round"],
        "median_round_s": statistics.median(r["wall_time_s"] for r in rounds),
        "client_steps": client_steps(run_dir),
        "groups_final": rounds[-1].get("groups"),
        **rarest_recall(run_dir),
        "run": str(run_dir),
    }


def client_steps(run_dir: Path) -> int:
    """Local optimiser steps summed over every client and round (the compute spent)."""
    lines = (run_dir / "clients.jsonl").read_text().splitlines()
    return int(sum(json.loads(x)["metrics"].get("steps", 0) for x in lines if x.strip()))


def rarest_recall(run_dir: Path, k: int = 3) -> dict[str, object]:
    """The final recall of the ``k`` classes rarest in the train subset, from classes.json."""
    path = run_dir / "classes.json"
    if not path.is_file():
        return {}
    c = json.loads(path.read_text())
    parts = json.loads((run_dir / "partitions.json").read_text())["clients"].values()
    train = [sum(h) for h in zip(*(p["label_histogram"] for p in parts), strict=True)]
    rare = sorted(range(len(train)), key=lambda i: (train[i], i))[:k]
    return {
        "rarest_classes": [
            {"class": c["label_names"][i], "train": train[i], "recall": c["recall"][i]}
            for i in rare
        ]
    }


def plot(results: dict[str, dict[str, object]], path: Path, title: str) -> None:
    curves = {}
    for label, r in results.items():
        acc = r.get("accuracy_per_round")
        if isinstance(acc, list):
            curves[label] = (list(range(1, len(acc) + 1)), acc)
    plot_curves(curves, path, title, "round")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", action="append", default=[])
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--runs", type=Path, help="keep the run folders here (default: discarded)")
    args = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for spec in args.variant:
            label, _, rest = spec.partition("=")
            sets = [*args.base, *(s for s in rest.split(";") if s)]
            results[label] = run_variant(label, sets, runs)
            print(label, json.dumps(results[label]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), args.title or " ".join(args.base))


if __name__ == "__main__":
    main()
