"""Issue 12's study: ``fedpeft run`` with every default left alone, federated (10 clients,
Dirichlet α) against centralised (``data.num_clients=1``: the same examples, one epoch a
round for the same rounds, so every example is seen as often), and an ablation of the
accuracy defaults (old defaults → + LDA head → + logit adjustment → + ``client.lr="auto"``).

Every run is one ``fedpeft run`` subprocess (``sweep.run_variant``) with only the sizes and
the variant's keys set; ``--workers`` run at once. Results (accuracy and macro-F1 per round,
rarest-train-class recall) are appended to ``--out`` as they land; finished entries are kept
on a rerun, failed ones retried.

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/accuracy_study.py \
        --out benchmarks/results/accuracy/study.json --seed 0 --workers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sweep import run_variant, variant_result

DATASETS = ("sst2", "ag_news", "trec", "banking77")
OLD = ["server.head_init='random'", "client.label_skew='none'", "client.lr=0.003"]
ABLATION = {  # the variant's keys on top of today's defaults (+ head + la: dir{α} itself)
    "old": OLD,
    "+head": ["client.label_skew='none'"],
    "+head+la+auto": ["client.lr='auto'"],
}


def plan(
    seeds: list[int],
    datasets: list[str],
    alphas: list[float],
    ablate: list[str],
    ablate_on: list[str],
    sizes: list[str],
) -> dict[str, list[str]]:
    """Run key (dataset/variant/seed) → its ``--set`` overrides."""
    runs: dict[str, list[str]] = {}
    for seed in seeds:
        for ds in datasets:
            base = [f"data.dataset='{ds}'", f"run.seed={seed}", *sizes]
            runs[f"{ds}/central/seed{seed}"] = [*base, "data.num_clients=1"]
            for a in alphas:
                runs[f"{ds}/dir{a}/seed{seed}"] = [*base, f"data.alpha={a}"]
            for a_text in ablate if ds in ablate_on else ():
                for name, keys in ABLATION.items():
                    runs[f"{ds}/dir{a_text}{name}/seed{seed}"] = [
                        *base,
                        f"data.alpha={a_text}",
                        *keys,
                    ]
    return runs


def summarise(results: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per (dataset, variant): mean ± std of final accuracy/macro-F1 over seeds, the gap to
    the centralised run of the same seeds, and the rarest class's recall."""
    groups: dict[str, list[dict[str, object]]] = {}
    for key, r in results.items():
        if "final_accuracy" in r:
            ds, variant, _ = key.split("/")
            groups.setdefault(f"{ds}/{variant}", []).append(r)
    out: dict[str, dict[str, object]] = {}
    for key, rows in sorted(groups.items()):
        acc = [float(r["final_accuracy"]) for r in rows]  # type: ignore[arg-type]
        f1 = [float(r["final_macro_f1"]) for r in rows]  # type: ignore[arg-type]
        entry: dict[str, object] = {"seeds": len(rows), **_stat("accuracy", acc)}
        entry.update(_stat("macro_f1", f1))
        central = groups.get(key.split("/")[0] + "/central")
        if central and not key.endswith("/central"):
            c_acc = statistics.mean(float(r["final_accuracy"]) for r in central)  # type: ignore[arg-type]
            c_f1 = statistics.mean(float(r["final_macro_f1"]) for r in central)  # type: ignore[arg-type]
            entry["gap_accuracy_points"] = round(100 * (c_acc - statistics.mean(acc)), 2)
            entry["gap_macro_f1_points"] = round(100 * (c_f1 - statistics.mean(f1)), 2)
        rare = [r["rarest_classes"][0]["recall"] for r in rows if r.get("rarest_classes")]  # type: ignore[index]
        if rare:
            entry["rarest_class_recall"] = round(statistics.mean(rare), 3)
        out[key] = entry
    return out


def partial_result(run_dir: Path, sets: list[str]) -> dict[str, object]:
    """An unfinished run's rounds so far and its round-0 head (``head_init.json``), marked
    ``partial`` (no final figures: the summary leaves it out)."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    rounds = [json.loads(x) for x in lines if x.strip()]
    head = run_dir / "head_init.json"
    return {
        "sets": sets,
        "partial": True,
        "round0_head": json.loads(head.read_text())["eval_after"] if head.is_file() else None,
        "accuracy_per_round": [r["eval"]["accuracy"] for r in rounds],
        "macro_f1_per_round": [r["eval"]["macro_f1"] for r in rounds],
        "round_wall_s": [r["wall_time_s"] for r in rounds],
        "run": str(run_dir),
    }


def _stat(name: str, xs: list[float]) -> dict[str, float]:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {name: round(statistics.mean(xs), 4), f"{name}_std": round(sd, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", action="append", type=int, default=[])
    ap.add_argument("--alpha", action="append", type=float, default=[])
    ap.add_argument("--ablate", action="append", default=[], help="α of the ablation runs")
    ap.add_argument("--ablate-on", action="append", default=[], help="datasets to ablate")
    ap.add_argument("--only", action="append", default=[], help="keys containing this")
    ap.add_argument("--dataset", action="append", default=[])
    ap.add_argument("--train-size", type=int, default=600)
    ap.add_argument("--eval-size", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--collect", action="store_true", help="read finished run folders only")
    ap.add_argument("--partial", action="store_true", help="--collect unfinished runs too")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/fedpeft_accuracy_runs"))
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    sizes = [
        f"data.train_size={args.train_size}",
        f"data.eval_size={args.eval_size}",
        f"run.rounds={args.rounds}",
        "run.threads=1",
    ]
    runs = plan(
        args.seed or [0],
        args.dataset or list(DATASETS),
        args.alpha or [0.5, 0.1],
        args.ablate,
        args.ablate_on,
        sizes,
    )
    todo = {
        k: v
        for k, v in runs.items()
        if ("error" in results.get(k, {"error": ""}))
        and (not args.only or any(o in k for o in args.only))
    }
    lock = threading.Lock()
    if args.collect:  # runs that finished after their driver stopped
        for key, sets in todo.items():
            done = sorted(
                args.runs.glob(key.replace("/", "_").replace("_", "-").replace(".", "-") + "-*")
            )
            if done and (done[-1] / "summary.json").is_file():
                results[key] = variant_result(done[-1], sets)
            elif done and args.partial:
                results[key] = partial_result(done[-1], sets)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        todo = {}

    def one(key: str) -> None:
        r = run_variant(key.replace("/", "_"), todo[key], args.runs)
        with lock:
            results[key] = r
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            acc = r.get("accuracy_per_round", r.get("error"))
            print(key, acc, flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(one, todo))
    summary = summarise(results)
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, entry in summary.items():
        print(key, entry)


if __name__ == "__main__":
    main()
