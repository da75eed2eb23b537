"""Plots final accuracy against bytes up per client per round, one point per PEFT method.

    .venv/bin/python benchmarks/plot_methods.py benchmarks/results/methods.json \
        docs/img/methods_accuracy_vs_bytes.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def main(src: Path, dst: Path) -> None:
    results = json.loads(src.read_text())
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for method, r in results.items():
        x, y = r["bytes_up_per_client_round"], r["final_accuracy"]
        ax.scatter(x, y)
        ax.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes up per client per round (log)")
    ax.set_ylabel("SST-2 dev accuracy after 4 rounds")
    ax.set_title("MiniLM-L6, 10 clients, Dirichlet(0.5), 2,000 examples", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
