"""Error feedback: the running sum telescopes, and the residual stays within its bound.

With ``G = max_t max|Δ_t|`` and ``ε = 2⁻⁷`` (scales rounded up to bf16), a group's scale is
at most ``(1+ε)(G + E_{t−1})`` where ``E_t = max|e_t|``. Nearest rounding errs by at most
``s/L``, stochastic by less than ``2s/L``, so by induction from ``E_0 = 0``::

    nearest:     E_t ≤ (1+ε)·G / (L − 1 − ε)
    stochastic:  E_t ≤ 2(1+ε)·G / (L − 2(1+ε))

For top-k (a contraction with ``δ = min_t k_t/n_t``): ``‖e_t‖ ≤ √(1−δ)·G₂ / (1 − √(1−δ))``
with ``G₂ = max_t ‖Δ_t‖₂``.
"""

import math

import pytest
import torch

from fedpeft.compression import CompressionScheme, decode_delta, encode_delta, layout_of
from fedpeft.compression.feedback import error_feedback
from fedpeft.types import AdapterState

EPS = 2**-7


def _deltas(steps: int, seed: int = 0) -> list[AdapterState]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "a": torch.randn(8, 96, generator=g) * 1e-2,
            "b": torch.randn(96, 8, generator=g) * 1e-3 + 2e-3,  # a drift: bias accumulates
        }
        for _ in range(steps)
    ]


def _run(
    scheme: CompressionScheme, deltas: list[AdapterState]
) -> tuple[list[AdapterState], list[AdapterState | None]]:
    """Every step's decoded delta and residual, through the real encoder and decoder."""
    gen, residual = torch.Generator().manual_seed(1), None
    decoded, residuals = [], []
    layout = layout_of(deltas[0])
    for delta in deltas:
        sent = encode_delta(delta, scheme, residual, gen)
        back, _ = decode_delta(sent.payload, layout)
        decoded.append(back)
        residual = sent.residual
        residuals.append(residual)
    return decoded, residuals


def _max_abs(states: list[AdapterState | None]) -> float:
    return max(float(v.abs().max()) for s in states if s is not None for v in s.values())


def _sum_error(decoded: list[AdapterState], deltas: list[AdapterState]) -> float:
    """``max|Σ_t Δ̂_t − Σ_t Δ_t|``: how far the receiver's running sum has drifted."""
    return max(
        float(
            (sum(d[k].double() for d in decoded) - sum(x[k].double() for x in deltas)).abs().max()
        )
        for k in deltas[0]
    )


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_residual_stays_within_the_derived_bound(bits: int, rounding: str) -> None:
    deltas = _deltas(300)
    scheme = CompressionScheme(bits, rounding, group_size=32)  # type: ignore[arg-type]
    decoded, residuals = _run(scheme, deltas)
    big_g = _max_abs(list(deltas))
    steps = 2**bits - 1
    if rounding == "nearest":
        bound = (1 + EPS) * big_g / (steps - 1 - EPS)
    else:
        bound = 2 * (1 + EPS) * big_g / (steps - 2 * (1 + EPS))
    assert _max_abs(residuals) <= bound * (1 + 1e-5)
    # telescoping: Σ Δ̂ = Σ Δ − e_T, so the running sum errs by the last residual only
    assert _sum_error(decoded, deltas) <= bound * (1 + 1e-3)


def test_without_feedback_nearest_rounding_error_accumulates() -> None:
    """The contrast that gives the bound test its teeth: one delta sent 300 times, whose
    rounding error without feedback adds up 300 times."""
    deltas = _deltas(1) * 300
    with_ef, _ = _run(CompressionScheme(4, "nearest", 32), deltas)
    without, residuals = _run(CompressionScheme(4, "nearest", 32, error_feedback=False), deltas)
    assert all(r is None for r in residuals)
    bound = (1 + EPS) * _max_abs(list(deltas)) / (15 - 1 - EPS)
    assert _sum_error(with_ef, deltas) <= bound * (1 + 1e-3)
    assert _sum_error(without, deltas) > 50 * bound


@pytest.mark.parametrize("topk", [0.1, 0.01])
def test_top_k_residual_stays_within_the_contraction_bound(topk: float) -> None:
    deltas = _deltas(200, seed=3)
    _, residuals = _run(CompressionScheme(32, topk=topk), deltas)
    delta_min = min(math.ceil(topk * 768) / 768, 1.0)  # both tensors hold 768 values
    q = math.sqrt(1 - delta_min)
    g2 = max(math.sqrt(sum(float(v.pow(2).sum()) for v in d.values())) for d in deltas)
    norms = [math.sqrt(sum(float(v.pow(2).sum()) for v in r.values())) for r in residuals if r]
    assert max(norms) <= q * g2 / (1 - q)


def test_combined_top_k_and_two_bits_keeps_the_residual_from_growing() -> None:
    """Empirical (no closed-form bound for the composition): the residual's size over the
    last 100 of 300 steps is no larger than over steps 100–200."""
    deltas = _deltas(300, seed=4)
    _, residuals = _run(CompressionScheme(2, topk=0.1, group_size=16), deltas)
    norms = [math.sqrt(sum(float(v.pow(2).sum()) for v in r.values())) for r in residuals if r]
    assert max(norms[200:]) <= 1.25 * max(norms[100:200])


def test_error_feedback_is_pure_and_telescopes_one_step() -> None:
    delta = {"x": torch.tensor([1.0, -2.0, 0.5])}
    residual = {"x": torch.tensor([0.25, 0.0, -0.5])}
    before = (delta["x"].clone(), residual["x"].clone())

    def halve(c: AdapterState) -> tuple[str, AdapterState]:
        return "msg", {k: v / 2 for k, v in c.items()}

    message, new = error_feedback(delta, residual, halve)
    assert message == "msg"
    assert new["x"].tolist() == [0.625, -1.0, 0.0]  # (Δ + e)/2
    assert torch.equal(delta["x"], before[0]) and torch.equal(residual["x"], before[1])
    with pytest.raises(ValueError, match="differ"):
        error_feedback(delta, {"y": torch.zeros(3)}, halve)
