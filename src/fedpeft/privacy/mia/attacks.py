"""Membership-inference attacks as pure functions over per-example losses, and their ROC.

Every attack maps losses to a score (higher = "member") for each audited example:

- loss threshold (Yeom et al., 2018): ``score = −ℓ_target(x)``;
- reference-calibrated loss (Watson et al., 2022, "difficulty calibration"; the
  round-0/base-model reference of Carlini et al., 2022, §IV):
  ``score = ℓ_ref(x) − ℓ_target(x)``, how much training lowered the loss of x;
- LiRA (Carlini et al., 2022, "Membership Inference Attacks From First Principles"):
  with the logit-scaled confidence ``φ = log(p / (1 − p))``, ``p = exp(−ℓ)`` the model's
  probability of the true label, and shadow models trained with (IN) and without (OUT)
  x, ``score = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)`` (online) or
  ``(φ − μ_out) / σ_out`` (offline, OUT shadows only). With few shadows the variances are
  pooled over all examples (their "global variance" variant).

``roc`` reports the AUC and the TPR at a low FPR (the metric Carlini et al. argue for),
via scikit-learn's ``roc_curve`` with every threshold kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.01, 0.001)


def loss_scores(losses: np.ndarray) -> np.ndarray:
    return -np.asarray(losses, dtype=np.float64)


def reference_scores(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.asarray(reference, dtype=np.float64) - np.asarray(target, dtype=np.float64)


def logit_confidence(losses: np.ndarray) -> np.ndarray:
    """``φ = log p − log(1 − p)`` with ``p = e^(−ℓ)``, computed stably (ℓ ≥ 0)."""
    loss = np.maximum(np.asarray(losses, dtype=np.float64), 1e-12)
    return -loss - np.log(-np.expm1(-loss))


def lira_scores(
    target: np.ndarray, shadow: np.ndarray, included: np.ndarray, online: bool = True
) -> np.ndarray:
    """LiRA over ``shadow`` losses (shadows × examples) and ``included`` (same shape, bool:
    x was in that shadow's training data). Every example needs OUT shadows (and IN ones
    when ``online``)."""
    phi_t = logit_confidence(target)
    phi = logit_confidence(shadow)
    inc = np.asarray(included, dtype=bool)
    if phi.shape != inc.shape or phi.shape[1] != phi_t.shape[0]:
        raise ValueError("shadow losses, membership and targets disagree in shape")
    out_n = (~inc).sum(axis=0)
    if (out_n == 0).any() or (online and (inc.sum(axis=0) == 0).any()):
        raise ValueError("every example needs OUT shadows (and IN shadows for online LiRA)")
    mu_out = np.where(~inc, phi, 0.0).sum(axis=0) / out_n
    sd_out = _pooled_sd(phi, ~inc, mu_out)
    if not online:
        return (phi_t - mu_out) / sd_out
    mu_in = np.where(inc, phi, 0.0).sum(axis=0) / inc.sum(axis=0)
    sd_in = _pooled_sd(phi, inc, mu_in)
    return _log_normal(phi_t, mu_in, sd_in) - _log_normal(phi_t, mu_out, sd_out)


def _pooled_sd(phi: np.ndarray, mask: np.ndarray, mu: np.ndarray) -> float:
    resid = np.where(mask, phi - mu, 0.0)
    dof = max(int(mask.sum()) - phi.shape[1], 1)
    return max(float(np.sqrt((resid**2).sum() / dof)), 1e-6)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: float) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


@dataclass(frozen=True)
class Roc:
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    tpr_at: dict[float, float]  # low FPR → the best TPR with FPR ≤ it
    members: int
    nonmembers: int

    def to_json(self) -> dict[str, object]:
        return {
            "auc": self.auc,
            **{f"tpr_at_{f:g}_fpr": v for f, v in self.tpr_at.items()},
            "members": self.members,
            "nonmembers": self.nonmembers,
            # an FPR below 1/nonmembers cannot be told apart from 0
            "resolvable_fprs": [f for f in self.tpr_at if f * self.nonmembers >= 1],
        }


def roc(scores: np.ndarray, is_member: np.ndarray) -> Roc:
    """AUC and TPR at 1% and 0.1% FPR of ``scores`` (higher = member)."""
    labels = np.asarray(is_member, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("an ROC needs both members and non-members")
    if not np.isfinite(s).all():
        raise ValueError("attack scores must be finite")
    fpr, tpr, _ = roc_curve(labels, s, drop_intermediate=False)
    tpr_at = {f: float(tpr[fpr <= f].max()) for f in LOW_FPRS}
    auc = float(roc_auc_score(labels, s))
    return Roc(fpr, tpr, auc, tpr_at, int(labels.sum()), int((~labels).sum()))
