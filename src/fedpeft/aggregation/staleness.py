"""Asynchronous aggregation: staleness-aware buffered updates (FedBuff + FedAsync weights).

A client that started from the global of version ``τ_c`` and finishes when the server is at
version ``t − 1`` sends ``θ_c^t``; its delta is ``Δ_c = θ_c^t − θ^{τ_c}`` (against the global it
started from, not the current one) and its staleness ``t − 1 − τ_c``. Once ``K`` deltas are
buffered (FedBuff; Nguyen et al., 2022, AISTATS) the server applies

    ``θ^t = θ^{t−1} + η Σ_c (n_c s(τ_c) / Σ_k n_k) Δ_c``,   ``s(τ) = (1 + τ)^{−a}``

(the proposal's update with FedAsync's polynomial staleness weight; Xie et al., 2019,
arXiv:1903.03934). The normaliser is ``Σ n`` without ``s``, so a buffer of stale deltas takes a
smaller step instead of being renormalised back to full size; ``a = 0`` is the proposal's
unweighted rule. Computation is in float64; tensors keep the global's dtype; inputs are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedpeft.aggregation.compat import check_states, normalised_weights
from fedpeft.types import AdapterState


@dataclass(frozen=True)
class StaleUpdate:
    """One buffered client result: its state, the global it started from, n_c and τ."""

    state: AdapterState
    start: AdapterState
    num_examples: float
    staleness: int


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedAsync's polynomial weight ``s(τ) = (1 + τ)^{−a}``; ``s(0) = 1``."""
    if staleness < 0:
        raise ValueError(f"`staleness` should be ≥ 0, got {staleness}.")
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"`exponent` should be finite and ≥ 0, got {exponent}.")
    return float((1.0 + staleness) ** (-exponent))


def client_delta(state: AdapterState, start: AdapterState) -> AdapterState:
    """``Δ_c = θ_c − θ^{τ_c}`` in float64, after checking keys and shapes agree."""
    check_states(
        [state],
        "client_delta",
        reference=start,
        what="client state",
        reference_name="the global it started from",
    )
    return {k: v.to(torch.float64) - start[k].to(torch.float64) for k, v in state.items()}


def staleness_update(
    global_state: AdapterState,
    buffer: Sequence[StaleUpdate],
    lr: float = 1.0,
    exponent: float = 0.5,
) -> AdapterState:
    """``θ^{t−1} + η Σ_c (n_c s(τ_c) / Σ_k n_k)(θ_c − θ^{τ_c})`` over the buffered updates."""
    if not buffer:
        raise ValueError("staleness_update needs at least one buffered update")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` should be positive, got {lr}.")
    p = normalised_weights([u.num_examples for u in buffer], "staleness_update")
    check_states([u.state for u in buffer], "staleness_update", reference=global_state)
    acc = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in global_state.items()}
    for u, pc in zip(buffer, p, strict=True):
        delta = client_delta(u.state, u.start)
        coef = pc * staleness_weight(u.staleness, exponent)
        for key, d in delta.items():
            acc[key] += coef * d
    return {
        key: (value.to(torch.float64) + lr * acc[key]).to(value.dtype)
        for key, value in global_state.items()
    }


def buffer_full(buffer: Sequence[StaleUpdate], size: int) -> bool:
    """FedBuff's trigger: a server step once ``K`` updates are buffered."""
    if size < 1:
        raise ValueError(f"`buffer_size` should be positive, got {size}.")
    return len(buffer) >= size
