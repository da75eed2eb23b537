"""Label-skew client losses: against independent numpy formulas, by invariants, and in a
real client's training on the tiny BERT."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.client import ClientData, train
from fedpeft.client.losses import LabelSkewLoss
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from tests.conftest import tiny_config

LABELS = np.array([0, 0, 0, 1, 2, 2])  # a client with classes 0–2 of 4, class 3 missing
COUNTS = np.array([3, 1, 2, 0])


def _logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 2])


def _numpy_ce(z: np.ndarray, y: np.ndarray, keep: np.ndarray) -> float:
    """Mean −log softmax over the kept classes only."""
    z = np.where(keep, z, -np.inf)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    return float(np.mean(lse - z[np.arange(len(y)), y]))


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjust_matches_the_formula(tau: float) -> None:
    z, y = _logits()
    loss = LabelSkewLoss("logit_adjust", tau).for_client(LABELS)(z, y)
    prior = COUNTS / COUNTS.sum()
    adjusted = z.numpy() + tau * np.log(np.where(prior > 0, prior, 1.0))  # 0s: masked below
    assert float(loss) == pytest.approx(_numpy_ce(adjusted, y.numpy(), COUNTS > 0), rel=1e-12)


def test_balanced_softmax_at_tau_1() -> None:
    """τ = 1 is Balanced Softmax: −log(π_y e^{z_y} / Σ_c π_c e^{z_c})."""
    z, y = _logits(1)
    p = COUNTS / COUNTS.sum()
    e = p * np.exp(z.numpy())
    want = float(np.mean(-np.log(e[np.arange(5), y.numpy()] / e.sum(1))))
    got = float(LabelSkewLoss("logit_adjust", 1.0).for_client(LABELS)(z, y))
    assert got == pytest.approx(want, rel=1e-12)


def test_fedlc_matches_the_formula() -> None:
    z, y = _logits(2)
    got = float(LabelSkewLoss("fedlc", 0.7).for_client(LABELS)(z, y))
    shift = -0.7 * np.maximum(COUNTS, 1) ** -0.25
    assert got == pytest.approx(_numpy_ce(z.numpy() + shift, y.numpy(), COUNTS > 0), rel=1e-12)


def test_fedrs_scales_only_missing_classes() -> None:
    z, y = _logits(3)
    got = float(LabelSkewLoss("fedrs", 0.5).for_client(LABELS)(z, y))
    scaled = z.numpy() * np.array([1, 1, 1, 0.5])
    assert got == pytest.approx(_numpy_ce(scaled, y.numpy(), np.ones(4, bool)), rel=1e-12)


def test_invariants() -> None:
    z, y = _logits(4)
    plain = torch.nn.functional.cross_entropy(z, y)
    balanced = np.repeat(np.arange(4), 5)
    # a balanced client, or FedRS with α = 1: plain cross-entropy
    assert float(LabelSkewLoss("logit_adjust").for_client(balanced)(z, y)) == pytest.approx(
        float(plain), rel=1e-12
    )
    assert float(LabelSkewLoss("fedrs", 1.0).for_client(LABELS)(z, y)) == pytest.approx(
        float(plain), rel=1e-12
    )
    # a missing class gets no gradient from the excluding rules, and less from FedRS
    for rule, tau in (("logit_adjust", 1.0), ("fedlc", 1.0), ("fedrs", 0.0)):
        zz = z.clone().requires_grad_(True)
        LabelSkewLoss(rule, tau).for_client(LABELS)(zz, y).backward()
        assert zz.grad is not None
        assert torch.all(zz.grad[:, 3] == 0), rule
        assert torch.all(zz.grad[:, :3].abs().sum() > 0)
    zz = z.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(zz, y).backward()
    assert zz.grad is not None and torch.all(zz.grad[:, 3] > 0)  # plain CE pushes it down


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="rule"):
        LabelSkewLoss("focal")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LabelSkewLoss("fedrs", 1.5)
    with pytest.raises(ValueError, match="tau"):
        LabelSkewLoss("fedlc", -1.0)


def test_client_training_leaves_a_missing_class_head_alone(tmp_path: Path) -> None:
    """A client holding AG News classes 0 and 1 only, under logit adjustment, leaves the
    head rows of classes 2 and 3 as they were; plain cross-entropy pushes them down."""
    heads = {}
    for rule in ("none", "logit_adjust"):
        cfg = tiny_config(
            tmp_path, f"client.label_skew='{rule}'", "peft.method='head'", "data.dataset='ag_news'"
        )
        task = build_task(cfg)
        only0 = np.flatnonzero(task.data.train.labels <= 1)[:32]
        before = {
            k: v.detach().clone() for k, v in task.model.named_parameters() if v.requires_grad
        }
        update = train(
            task.model, instruction_for(cfg, 1, 0), ClientData(task.data.train, only0), task.device
        )
        assert update.metrics["steps"] == 2
        after = dict(task.model.named_parameters())
        bias = next(k for k in before if k.endswith("classifier.bias"))
        heads[rule] = after[bias].detach() - before[bias]
    assert torch.all(heads["logit_adjust"][2:] == 0) and torch.all(heads["logit_adjust"][:2] != 0)
    assert torch.all(heads["none"][2:] < 0)
