"""Membership-inference audits: attacks over per-example losses and their ROC."""

from fedpeft.privacy.mia.attacks import (
    LOW_FPRS,
    Roc,
    lira_scores,
    logit_confidence,
    loss_scores,
    reference_scores,
    roc,
)
from fedpeft.privacy.mia.losses import example_losses

__all__ = [
    "LOW_FPRS",
    "Roc",
    "example_losses",
    "lira_scores",
    "logit_confidence",
    "loss_scores",
    "reference_scores",
    "roc",
]
