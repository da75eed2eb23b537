"""An experiment's plots (matplotlib, Agg): per cell, accuracy against rounds, against
cumulative bytes up, and against time (the simulated clock when the runs simulate devices,
else cumulative wall time), each variant's mean over seeds with a ±1 std band."""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from fedpeft.report.tables import RunFigures, in_cell

log = logging.getLogger("fedpeft.report")

PANELS = (
    ("round", "round", False),
    ("cum_bytes_up", "bytes up, all clients (cumulative)", True),
)


def plot_cell(
    folder: Path,
    name: str,
    cell: dict[str, str],
    figures: Sequence[RunFigures],
    variants: Sequence[str],
) -> Path | None:
    """One PNG with three panels for ``cell``; None without matplotlib or data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator, NullFormatter
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'fedpeft[report]')")
        return None
    runs = [f for f in figures if in_cell(f, cell)]
    if not runs:
        return None
    simulated = all(f.final("sim_clock_s") is not None for f in runs)
    time_axis = (
        ("sim_clock_s", "simulated time (s)", False)
        if simulated
        else ("cum_wall_time_s", "wall-clock time (s, shared machine)", False)
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=110, sharey=True)
    for ax, (key, xlabel, logx) in zip(axes, (*PANELS, time_axis), strict=True):
        for variant in variants:
            mine = [f for f in runs if f.variant == variant]
            xs, mean, std = _curve(mine, key)
            if not xs:
                continue
            (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=variant)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel(xlabel)
        if key == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short spans
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (central evaluation)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(", ".join(f"{k}={v}" for k, v in cell.items()), fontsize=10)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_slug(name)}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _curve(runs: Sequence[RunFigures], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per round index: x (mean over seeds), accuracy mean and std, where every seed has both."""
    if not runs:
        return [], [], []
    length = min(len(f.rounds) for f in runs)
    xs, mean, std = [], [], []
    for i in range(length):
        points = [(f.rounds[i].get(key), f.rounds[i].get("accuracy")) for f in runs]
        good = [
            (float(x), float(y))
            for x, y in points
            if isinstance(x, int | float) and isinstance(y, int | float)
        ]
        if len(good) != len(runs):
            continue
        xs.append(statistics.fmean(x for x, _ in good))
        ys = [y for _, y in good]
        mean.append(statistics.fmean(ys))
        std.append(statistics.stdev(ys) if len(ys) > 1 else 0.0)
    return xs, mean, std


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "cell"
