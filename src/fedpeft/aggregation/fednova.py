"""Normalised averaging for unequal local work: FedNova (Wang et al., 2020, NeurIPS).

A client that runs ``τ_i`` local steps moves ``Δ_i = θ_i − θ⁰_i`` about ``τ_i`` times one
step's length, so FedAvg's ``Σ p_i Δ_i`` leans towards the clients that ran longest (an
objective they alone define). FedNova averages the per-step directions and takes
``τ_eff = Σ p_i τ_i`` of them (vanilla local SGD: ``‖a_i‖₁ = τ_i``)::

    θ⁺ = θ⁰ + τ_eff · Σ_i p_i · Δ_i/τ_i

``normalise_work`` rewrites each update as ``θ'_i = θ⁰_i + (τ_eff/τ_i)·Δ_i``, so that any
weighted mean of the rewritten states (FedAvg, or the partial average of a heterogeneous
envelope) is FedNova's step. ``τ_eff`` is computed per key over the clients that hold it,
as the envelope averages each key over its holders. Pure; inputs are never changed.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.types import AdapterState

WorkUpdate = tuple[AdapterState, AdapterState, float, float]  # (θ_i, θ⁰_i, τ_i, n_i)


def normalise_work(updates: Sequence[WorkUpdate]) -> list[tuple[AdapterState, float]]:
    """``[(θ⁰_i + (τ_eff,k/τ_i)·(θ_i − θ⁰_i), n_i)]`` with ``τ_eff,k = Σ_{i∋k} n_i τ_i /
    Σ_{i∋k} n_i`` per key ``k``; every ``τ_i`` and ``n_i`` must be positive."""
    for i, (state, start, tau, weight) in enumerate(updates):
        if not (tau > 0 and weight > 0):
            raise ValueError(
                f"update {i}: local steps and weight must be positive, got {tau}, {weight}"
            )
        missing = sorted(set(state) - set(start))
        if missing:
            raise ValueError(f"update {i}: no start value for {missing[0]!r}")
    totals: dict[str, tuple[float, float]] = {}
    for state, _, tau, weight in updates:
        for key in state:
            steps, mass = totals.get(key, (0.0, 0.0))
            totals[key] = (steps + weight * tau, mass + weight)
    out = []
    for state, start, tau, weight in updates:
        scaled = {}
        for key, value in state.items():
            steps, mass = totals[key]
            factor = steps / mass / tau
            base = start[key].to(value.dtype)
            scaled[key] = base + factor * (value - base)
        out.append((scaled, weight))
    return out
