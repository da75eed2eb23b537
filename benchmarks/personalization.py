"""Personalisation study (issue 16): every client scored on its own held-out share.

For each dataset × split × seed, five federations (``fedpeft run`` in fresh processes):

- ``fedavg``: FedAvg with ``personalization.mode = 'finetune'`` and the baselines, so one
  run scores the global, FT-after-FL (``finetune``), local-only (``local``) and fully
  personalised (``full``: the whole PEFT module fine-tuned from the final global);
- ``head``, ``lora_b``, ``dual``: the other personalisation modes (``head``: each client's
  first head is the discriminant of its own features; ``head_random``: FedPer's random one);
- ``clustered``: clustered aggregation (k = 2), each client scored with its cluster's global.

Each finished run is added to ``--out`` at once (a rerun skips what is there, so the grid
can be run in pieces); ``--report`` prints the Markdown table (mean ± std over seeds) and
draws the PNG beside the JSON.

    PYTHONPATH=src .venv/bin/python benchmarks/personalization.py \
        --out benchmarks/results/personalization.json --runs runs/personalization \
        --datasets sst2 ag_news --splits dir05 dir01 patho --seeds 0 1 2 --jobs 2
    PYTHONPATH=src .venv/bin/python benchmarks/personalization.py \
        --out benchmarks/results/personalization.json --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import run_fedpeft

BASE = [  # sized to a shared 2-core machine: 8 clients × ~30 train + ~10 held-out examples
    "model.max_length=32",
    "data.train_size=320",
    "data.eval_size=64",
    "data.num_clients=8",
    "data.client_test_fraction=0.25",
    "run.rounds=3",
    "run.threads=1",
]
SPLITS = {
    "dir05": ["data.partition='dirichlet'", "data.alpha=0.5"],
    "dir01": ["data.partition='dirichlet'", "data.alpha=0.1"],
    "patho": ["data.partition='pathological'"],  # classes per client: see _classes
}
VARIANTS = {
    "fedavg": ["personalization.mode='finetune'", "personalization.baselines=true"],
    "head": ["personalization.mode='head'"],  # its first head: the client's own LDA
    "head_random": ["personalization.mode='head'", "personalization.head_start='random'"],
    "lora_b": ["personalization.mode='lora_b'"],
    "dual": ["personalization.mode='dual'"],
    "clustered": ["server.aggregator='clustered'"],
}
ROWS = [  # (label, variant, model scored in that run)
    ("global (FedAvg)", "fedavg", "global"),
    ("finetune (FT-after-FL)", "fedavg", "personal"),
    ("head (FedPer, random start)", "head_random", "personal"),
    ("head (FedPer, local LDA start)", "head", "personal"),
    ("lora_b (FedSA-LoRA)", "lora_b", "personal"),
    ("dual (FedDPA)", "dual", "personal"),
    ("clustered (k = 2)", "clustered", "global"),
    ("local only", "fedavg", "local"),
    ("fully personalised", "fedavg", "full"),
]


def _classes(dataset: str) -> list[str]:
    return [f"data.classes_per_client={1 if dataset == 'sst2' else 2}"]


def settings(dataset: str, split: str, seed: int, variant: str, extra: list[str]) -> list[str]:
    sets = [*BASE, f"data.dataset='{dataset}'", *SPLITS[split], f"run.seed={seed}"]
    if split == "patho":
        sets += _classes(dataset)
    return [*sets, *VARIANTS[variant], *extra]


def run_one(key: str, sets: list[str], runs: Path) -> dict[str, Any]:
    tag = key.replace("/", "-")
    try:
        run_dir = run_fedpeft(runs, tag, sets)
    except RuntimeError as first:  # once more: a shared machine may kill a process
        print(key, "retrying:", first, flush=True)
        try:
            run_dir = run_fedpeft(runs, tag, sets)
        except RuntimeError as e:
            return {"sets": sets, "error": str(e)}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "personal.jsonl").read_text().splitlines()]
    last = max(r["round"] for r in rows)
    return {
        "sets": sets,
        "run": str(run_dir),
        "personal": summary["personal"],
        "clients": [r for r in rows if r["round"] == last],
        "central_accuracy": summary["final_accuracy"],
        "bytes_per_client_round": summary["bytes_up_per_client_round"]
        * (1 + summary["bytes_down_total"] / max(1, summary["bytes_up_total"])),
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "trainable_params": summary["trainable_params"],
        "wall_time_s": summary["wall_time_s"],
    }


def run_grid(args: argparse.Namespace) -> None:
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    lock = threading.Lock()
    todo = [
        (f"{d}/{s}/seed{seed}/{v}", settings(d, s, seed, v, args.set))
        for seed in args.seeds
        for d in args.datasets
        for s in args.splits
        for v in args.variants
        if f"{d}/{s}/seed{seed}/{v}" not in results or "error" in results[f"{d}/{s}/seed{seed}/{v}"]
    ]

    def work(item: tuple[str, list[str]]) -> None:
        key, sets = item
        result = run_one(key, sets, args.runs)
        with lock:
            results[key] = result
            args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(key, json.dumps(result.get("personal") or result.get("error"))[:300], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, todo))


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def table(results: dict[str, Any], dataset: str, split: str) -> tuple[list[str], dict]:
    """Markdown rows for one setting (mean ± std over the seeds that ran), and the means."""
    seeds = sorted({k.split("/")[2] for k in results if k.startswith(f"{dataset}/{split}/")})
    lines, means = [], {}
    for label, variant, model in ROWS:
        mean, worst, ratio, nbytes, params = [], [], [], [], []
        for seed in seeds:
            r = results.get(f"{dataset}/{split}/{seed}/{variant}", {})
            full = results.get(f"{dataset}/{split}/{seed}/fedavg", {})
            m = (r.get("personal") or {}).get("models", {}).get(model)
            f = (full.get("personal") or {}).get("models", {}).get("full")
            if m is None:
                continue
            mean.append(m["mean"])
            worst.append(m["worst10"])
            if f:
                ratio.append(m["mean"] / f["mean"])
            if model not in ("local", "full"):  # baselines are trained on the client alone
                nbytes.append(r["bytes_per_client_round"])
            params.append((r["personal"] or {}).get("personal_params", 0))
        n = f"{len(mean)}"
        b = f"{statistics.mean(nbytes) / 1e6:.2f}" if nbytes else "0 (local)"
        p = f"{max(params):,}" if params and max(params) else "—"
        lines.append(
            f"| {label} | {_stat(mean)} | {_stat(worst)} | {_stat(ratio)} | {b} | {p} | {n} |"
        )
        means[label] = (_mean(mean), _mean(worst))
    return lines, means


def _cell(results: dict[str, Any], dataset: str, split: str, variant: str, model: str) -> str:
    """``mean ± std / worst 10 % / ÷ fully personalised`` over the seeds of one setting."""
    mean, worst, ratio = [], [], []
    for seed in sorted({k.split("/")[2] for k in results if k.startswith(f"{dataset}/{split}/")}):
        m = results.get(f"{dataset}/{split}/{seed}/{variant}", {}).get("personal") or {}
        f = results.get(f"{dataset}/{split}/{seed}/fedavg", {}).get("personal") or {}
        got, full = m.get("models", {}).get(model), f.get("models", {}).get("full")
        if got is None or full is None:
            continue
        mean.append(got["mean"])
        worst.append(got["worst10"])
        ratio.append(got["mean"] / full["mean"])
    if not mean:
        return "—"
    return f"{_stat(mean)} / {statistics.mean(worst):.3f} / {statistics.mean(ratio):.2f}"


def compact(results: dict[str, Any]) -> None:
    """One table per dataset, a column per split: mean ± std over seeds of the mean client
    accuracy / the mean over seeds of the worst 10 % / of the ratio to fully personalised."""
    for dataset in sorted({k.split("/")[0] for k in results}):
        splits = [s for s in SPLITS if any(k.startswith(f"{dataset}/{s}/") for k in results)]
        print(f"\n**{dataset}**\n\n| model | " + " | ".join(splits) + " |")
        print("| --- |" + " --- |" * len(splits))
        for label, variant, model in ROWS:
            cells = [_cell(results, dataset, s, variant, model) for s in splits]
            if any(c != "—" for c in cells):
                print(f"| {label} | " + " | ".join(cells) + " |")


def report(args: argparse.Namespace) -> None:
    results = json.loads(args.out.read_text())
    for path in args.also:  # grids run as separate processes, one file each
        results |= {k: v for k, v in json.loads(path.read_text()).items() if k not in results}
    if args.compact:
        compact(results)
        return
    settings_seen = sorted({tuple(k.split("/")[:2]) for k in results})
    head = (
        "| model | mean client accuracy | worst 10 % | ÷ fully personalised | MB / client / round "
        "| personal params | seeds |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    panels = {}
    for dataset, split in settings_seen:
        lines, means = table(results, dataset, split)
        print(f"\n**{dataset}, {split}**\n\n{head}\n" + "\n".join(lines))
        panels[f"{dataset} {split}"] = means
    plot(panels, args.out.with_suffix(".png"))


def plot(panels: dict[str, dict[str, tuple[float | None, float | None]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _, _ in ROWS]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), dpi=120, sharey=True)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (title, means) in zip(axes, panels.items(), strict=True):
        xs = list(range(len(labels)))
        for i, (name, shift) in enumerate((("mean", -0.2), ("worst 10 %", 0.2))):
            heights = [means.get(label, (None, None))[i] or 0.0 for label in labels]
            ax.bar([x + shift for x in xs], heights, 0.4, label=name)
        ax.set_xticks(xs, [label.split(" (")[0] for label in labels], rotation=70, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("client accuracy (own held-out share)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=Path, default=Path("runs/personalization"))
    ap.add_argument("--datasets", nargs="+", default=["sst2", "ag_news"])
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="extra --set overrides")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only print the table and plot")
    ap.add_argument("--also", nargs="*", type=Path, default=[], help="--report: more results")
    ap.add_argument("--compact", action="store_true", help="--report: a table per dataset")
    args = ap.parse_args()
    if args.report:
        report(args)
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
