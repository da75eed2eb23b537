"""Membership-inference attacks and metrics: brute-force references, invariants, and a
synthetic population where calibration must beat the plain loss threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.privacy.mia import (
    example_losses,
    lira_scores,
    logit_confidence,
    loss_scores,
    reference_scores,
    roc,
)
from fedpeft.server.task import build_task
from tests.conftest import tiny_config


def _brute_auc(scores: np.ndarray, member: np.ndarray) -> float:
    """P(score of a member > score of a non-member) + ½ P(tie), over all pairs."""
    pos, neg = scores[member], scores[~member]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _brute_tpr_at(scores: np.ndarray, member: np.ndarray, fpr: float) -> float:
    best = 0.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        flagged = scores >= t
        if flagged[~member].mean() <= fpr:
            best = max(best, flagged[member].mean())
    return best


def test_roc_matches_brute_force_references() -> None:
    rng = np.random.default_rng(0)
    member = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 0.8 * member
    scores[:20] = np.round(scores[:20])  # some ties
    r = roc(scores, member)
    assert r.auc == pytest.approx(_brute_auc(scores, member), abs=1e-12)
    for f in (0.01, 0.001, 0.1):
        if f in r.tpr_at:
            assert r.tpr_at[f] == pytest.approx(_brute_tpr_at(scores, member, f), abs=1e-12)
    j = r.to_json()
    assert j["members"] == member.sum() and j["resolvable_fprs"] == [0.01]


def test_roc_invariants() -> None:
    member = np.array([True] * 50 + [False] * 50)
    perfect = np.arange(100.0)[::-1]
    assert roc(perfect, member).auc == 1.0 and roc(perfect, member).tpr_at[0.001] == 1.0
    assert roc(-perfect, member).auc == 0.0
    scores = np.random.default_rng(1).normal(size=100)
    assert roc(scores, member).auc == pytest.approx(1 - roc(-scores, member).auc)
    assert roc(np.exp(scores), member).auc == roc(scores, member).auc  # monotone: same ROC
    with pytest.raises(ValueError, match="both"):
        roc(scores, np.ones(100, bool))


def test_logit_confidence_is_log_odds_of_the_true_label() -> None:
    loss = np.array([1e-9, 1e-3, 0.1, 0.693, 2.0, 30.0])
    p = np.exp(-loss[1:5])
    np.testing.assert_allclose(logit_confidence(loss[1:5]), np.log(p / (1 - p)), rtol=1e-9)
    phi = logit_confidence(loss)
    assert np.isfinite(phi).all() and (np.diff(phi) < 0).all()  # lower loss, higher φ
    assert abs(logit_confidence(np.array([np.log(2)]))[0]) < 1e-12  # p = ½: φ = 0


def _population(seed: int, shadows: int = 16):
    """φ = difficulty + 1·member + noise: difficulty varies far more than membership moves."""
    rng = np.random.default_rng(seed)
    n = 2000
    difficulty = rng.normal(0, 3, size=n)
    member = rng.random(n) < 0.5

    def loss_of(phi: np.ndarray) -> np.ndarray:  # inverse of logit_confidence
        return np.log1p(np.exp(-phi))

    target = loss_of(difficulty + member + rng.normal(0, 0.3, size=n))
    reference = loss_of(difficulty + rng.normal(0, 0.3, size=n))
    included = np.zeros((shadows, n), bool)
    for j in range(n):
        included[rng.permutation(shadows)[: shadows // 2], j] = True
    shadow = loss_of(difficulty + included + rng.normal(0, 0.3, size=(shadows, n)))
    return member, target, reference, shadow, included


def test_calibrated_attacks_beat_the_loss_threshold_on_hard_and_easy_examples() -> None:
    member, target, reference, shadow, included = _population(0)
    plain = roc(loss_scores(target), member)
    calibrated = roc(reference_scores(target, reference), member)
    online = roc(lira_scores(target, shadow, included), member)
    offline = roc(lira_scores(target, shadow, included, online=False), member)
    assert 0.5 < plain.auc < 0.7
    # loss differences compress confident examples; LiRA works in φ-space per example
    assert 0.8 < calibrated.auc < online.auc and online.auc > 0.97 and offline.auc > 0.97
    assert online.tpr_at[0.01] > 5 * max(plain.tpr_at[0.01], 0.01)
    # no signal, no attack: members and non-members drawn alike
    null = _population(1)
    rng = np.random.default_rng(2)
    shuffled = rng.permutation(null[0])
    assert abs(roc(lira_scores(null[1], null[3], null[4]), shuffled).auc - 0.5) < 0.05


def test_lira_needs_in_and_out_shadows() -> None:
    target = np.ones(3)
    with pytest.raises(ValueError, match="OUT shadows"):
        lira_scores(target, np.ones((2, 3)), np.ones((2, 3), bool))


def test_example_losses_match_the_models_own_loss_and_ignore_batching(tmp_path: Path) -> None:
    task = build_task(tiny_config(tmp_path))
    idx = task.data.partitions[0][:20]
    one = example_losses(task.model, task.data.train, idx, 1, task.device)
    many = example_losses(task.model, task.data.train, idx, 64, task.device)
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-5)
    task.model.eval()
    with torch.inference_mode():
        mean = task.model(**task.data.train.collate(idx).model_inputs()).loss
    assert float(mean) == pytest.approx(one.mean(), rel=1e-4)
