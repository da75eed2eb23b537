"""Accuracy per round of several sweeps (``sweep.py`` JSONs) side by side, one panel each.

    .venv/bin/python benchmarks/plot_grid.py --out benchmarks/results/aggregators_agnews.png \
        "IID=benchmarks/results/aggregators_agnews_iid.json" \
        "Dirichlet 0.5=benchmarks/results/aggregators_agnews_dir05.json"
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("panels", nargs="+", help="TITLE=SWEEP.json")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(2, len(args.panels))
    rows = math.ceil(len(args.panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    labels: list[str] = []
    for ax, spec in zip(axes.flat, args.panels, strict=False):
        title, _, path = spec.partition("=")
        results = json.loads(Path(path).read_text())
        for label, r in results.items():
            acc = r.get("accuracy_per_round")
            if not isinstance(acc, list):
                continue
            if label not in labels:
                labels.append(label)
            color = f"C{labels.index(label) % 10}"
            ax.plot(range(1, len(acc) + 1), acc, marker="o", ms=3, color=color, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy on the eval split")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(args.panels) :]:
        ax.axis("off")
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    names, handles = list(seen), list(seen.values())
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)


if __name__ == "__main__":
    main()
