"""PNG plots of a run (matplotlib, imported here only, with the Agg backend)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from fedpeft.report.fmt import eval_of, finite

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
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(x, _metric(rounds, "accuracy"), marker="o", label="accuracy")
    ax.plot(x, _metric(rounds, "macro_f1"), marker="s", label="macro-F1")
    ax.set_xlabel("round")
    ax.set_ylabel("central evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = folder / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _metric(rounds: list[dict[str, Any]], name: str) -> list[float]:
    """One evaluation metric per round; NaN (a gap in the line) where a round lacks it."""
    values = [finite(eval_of(r).get(name)) for r in rounds]
    return [math.nan if v is None else v for v in values]
