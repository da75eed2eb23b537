"""The ROC plot of a membership-inference audit (log-log axes, as Carlini et al. 2022 urge:
the low-FPR corner is where an attack is dangerous)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedpeft.errors import FedpeftError
from fedpeft.privacy.mia import Roc


def plot_roc(curves: Mapping[str, Roc], path: Path, title: str) -> Path:
    """One line per (target, attack) curve, labelled with its AUC and TPR at 1% FPR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FedpeftError(
            "the audit's ROC plot needs matplotlib; "
            "install it with `pip install 'fedpeft[report]'`."
        ) from None
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    floor = min(1e-3, 1 / max(max(c.nonmembers for c in curves.values()), 1))
    for name, c in curves.items():
        fpr, tpr = np.maximum(c.fpr, floor), np.maximum(c.tpr, floor)
        ax.plot(fpr, tpr, label=f"{name}: AUC {c.auc:.3f}, TPR@1% {c.tpr_at[0.01]:.3f}")
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
