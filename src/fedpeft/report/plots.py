"""PNG plots of a run (matplotlib, imported here only, with the Agg backend): accuracy and
macro-F1 per round with the chance level (and a reference run's accuracy), and the
row-normalised confusion matrix of a classifier."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from fedpeft.report.fmt import eval_of, finite
from fedpeft.report.personal import plot_personal
from fedpeft.server.classes import ClassReport

log = logging.getLogger("fedpeft.report")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'fedpeft[report]')")
        return None
    return plt


def plot_run(
    run_dir: Path,
    rounds: list[dict[str, Any]],
    chance: float | None = None,
    reference: tuple[str, list[Any]] | None = None,
    classes: ClassReport | None = None,
) -> list[Path]:
    """``plots/accuracy.png`` (with ``chance`` dashed and the ``reference`` run's accuracy per
    round dotted, when given) and, with ``classes``, ``plots/confusion.png``."""
    plt = _pyplot()
    if plt is None:
        return []
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(x, _metric(rounds, "accuracy"), marker="o", label="accuracy")
    ax.plot(x, _metric(rounds, "macro_f1"), marker="s", label="macro-F1")
    if reference is not None:
        name, acc = reference
        ref = [math.nan if v is None else v for v in (finite(a) for a in acc)]
        ax.plot(range(1, len(ref) + 1), ref, ls=":", color="black", label=f"{name} accuracy")
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--", label=f"chance ({chance:.3f})")
    ax.set_xlabel("round")
    ax.set_ylabel("central evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    paths = [path]
    if classes is not None:
        paths.append(plot_confusion(plt, classes, folder / "confusion.png"))
    personal = plot_personal(run_dir, folder, plt)  # clients on their own data, if scored
    if personal is not None:
        paths.append(personal)
    return paths


def plot_confusion(plt: Any, report: ClassReport, path: Path) -> Path:
    """Rows: true class, columns: predicted, each row divided by its support."""
    import numpy as np

    cm = np.asarray(report.confusion, dtype=float)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(report.label_names)
    side = min(12.0, 2.5 + 0.25 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=110)
    im = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    if n <= 30:
        ticks = range(n)
        names = [s[:18] for s in report.label_names]
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (row-normalised), accuracy {report.accuracy:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _metric(rounds: list[dict[str, Any]], name: str) -> list[float]:
    """One evaluation metric per round; NaN (a gap in the line) where a round lacks it."""
    values = [finite(eval_of(r).get(name)) for r in rounds]
    return [math.nan if v is None else v for v in values]
