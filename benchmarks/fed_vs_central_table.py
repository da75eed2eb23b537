"""The issue-12 table from one or more ``fed_vs_central.py`` result files: per dataset and
split, the final accuracy of every seed, mean ± std of accuracy and macro-F1, the gap to the
centralised run of the same seed (paired: mean ± std over seeds) against the issue's target
(3 points at Dirichlet 0.5, 8 at 0.1), and the mean recall of the rarest train classes.

    python benchmarks/fed_vs_central_table.py benchmarks/results/accuracy/fed_vs_central_*.json
    # --plot FILE.png: accuracy per round, a panel per dataset, a line per split and seed
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TARGET = {"dir0.5": 3.0, "dir0.1": 8.0}  # points behind centralised, at most


def _mean_std(xs: list[float], scale: float = 1.0) -> str:
    m = statistics.mean(xs) * scale
    s = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}" if scale == 1.0 else f"{m:.1f} ± {s:.1f}"


def table(results: dict[str, dict[str, object]]) -> str:
    runs: dict[tuple[str, str], dict[int, dict[str, object]]] = {}
    for key, r in results.items():
        if "final_accuracy" not in r:
            continue
        dataset, split, seed = key.split("/")
        runs.setdefault((dataset, split), {})[int(seed.removeprefix("seed"))] = r
    lines = [
        "| dataset | split | final accuracy per seed | accuracy | macro-F1 "
        "| gap to centralised, points (paired) | target | rarest train classes: mean recall |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for (dataset, split), by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        acc = [float(by_seed[s]["final_accuracy"]) for s in seeds]  # type: ignore[arg-type]
        f1 = [float(by_seed[s]["final_macro_f1"]) for s in seeds]  # type: ignore[arg-type]
        central = runs.get((dataset, "central_lda"), {})
        gap, target = "—", "—"
        paired = [s for s in seeds if s in central and split != "central_lda"]
        if paired:
            gaps = [
                float(central[s]["final_accuracy"]) - float(by_seed[s]["final_accuracy"])  # type: ignore[arg-type]
                for s in paired
            ]
            gap = _mean_std(gaps, 100.0) + f" (n={len(paired)})"
            if split in TARGET:
                met = statistics.mean(gaps) * 100 <= TARGET[split]
                every = all(g * 100 <= TARGET[split] for g in gaps)
                target = f"≤ {TARGET[split]:.0f}: {'met' if met else 'missed'}"
                target += ", every seed" if every else ", not every seed" if met else ""
        recall: dict[str, list[float]] = {}
        train: dict[str, int] = {}
        for s in seeds:
            for c in by_seed[s].get("rarest_classes", []):  # type: ignore[attr-defined]
                recall.setdefault(c["class"], []).append(c["recall"])
                train[c["class"]] = c["train"]
        rare = "; ".join(
            f"{name} ({train[name]}): {statistics.mean(v):.2f}"
            for name, v in sorted(recall.items(), key=lambda kv: train[kv[0]])[:3]
        )
        per_seed = ", ".join(f"{a:.3f}" for a in acc)
        lines.append(
            f"| {dataset} | {split} | {per_seed} | {_mean_std(acc)} | {_mean_std(f1)} "
            f"| {gap} | {target} | {rare} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, object]], out: Path) -> None:
    """Accuracy per round: one panel per dataset, one line per (split, seed), centralised
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {k: r for k, r in results.items() if k.count("/") == 2 and "final_accuracy" in r}
    datasets = sorted({key.split("/")[0] for key in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    colours = {"central_lda": "black", "dir0.5": "tab:blue", "dir0.1": "tab:orange"}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for key, r in sorted(results.items()):
            name, split, seed = key.split("/")
            if name != dataset:
                continue
            acc = r["accuracy_per_round"]
            assert isinstance(acc, list)
            points = [(i, a) for i, a in enumerate(acc, 1) if a is not None]  # evaluated rounds
            ax.plot(
                [i for i, _ in points],
                [a for _, a in points],
                marker="o" if len(points) < len(acc) else None,
                linestyle="--" if split.startswith("central") else "-",
                color=colours.get(split, "tab:gray"),
                label=f"{split} {seed}",
            )
        ax.set_title(dataset)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, help="accuracy per round as a PNG")
    args = ap.parse_args()
    merged: dict[str, dict[str, object]] = {}
    for f in args.files:
        merged.update(json.loads(f.read_text()))
    print(table(merged))
    if args.plot:
        plot(merged, args.plot)


if __name__ == "__main__":
    main()
