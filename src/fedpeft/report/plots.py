"""PNG plots of a run (matplotlib, imported here only, with the Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("fedpeft.report")


def plot_run(run_dir: Path, rounds: list[dict[str, Any]]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'fedpeft[report]')")
        return []
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    rounds = [r for r in rounds if r["eval"]]  # rounds with central evaluation (eval.every)
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(x, [r["eval"]["accuracy"] for r in rounds], marker="o", label="accuracy")
    ax.plot(x, [r["eval"]["macro_f1"] for r in rounds], marker="s", label="macro-F1")
    ax.set_xlabel("round")
    ax.set_ylabel("central evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = folder / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
