"""Client drift: SCAFFOLD's control variates and FedNova's normalised averaging, as pure
functions over ``AdapterState`` (float64 sums, inputs untouched).

SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML, Alg. 1), with server control ``c`` and client controls ``c_i``:

- client step:     ``y ← y − η_l (g_i(y) − c_i + c)``   (the client half: ``client/scaffold.py``)
- client control:  option I  ``c_i⁺ = g_i(x)``; option II ``c_i⁺ = c_i − c + (x − y)/(K η_l)``
                   (``option_ii_control``, for K plain SGD steps)
- server:          ``x ← x + η_g · mean_i (y_i − x)``;  ``c ← c + (|S|/N) · mean_i Δc_i``
                   (``server_control``)

FedNova (Wang et al., 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS, eq. 6–7): a client that ran ``a_i`` local steps
contributes its update per step, ``d_i = (y_i − x)/a_i``, and the server steps
``x ← x + τ_eff · Σ_i p_i d_i`` with ``p_i = n_i/Σn`` and ``τ_eff = Σ_i p_i a_i``. With equal
``a_i`` it is FedAvg; with unequal ones it no longer over-weights clients that did more work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpeft.aggregation.compat import check_states, normalised_weights
from fedpeft.types import AdapterState


def zeros_like_state(state: AdapterState) -> AdapterState:
    """A control variate of zeros (SCAFFOLD's initial ``c`` and ``c_i``)."""
    return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}


def option_ii_control(
    local: AdapterState,
    server: AdapterState,
    start: AdapterState,
    end: AdapterState,
    steps: int,
    lr: float,
) -> AdapterState:
    """``c_i⁺ = c_i − c + (x − y)/(K η_l)`` after ``K = steps`` SGD steps from x to y."""
    if steps <= 0 or lr <= 0:
        raise ValueError(f"steps and lr should be positive, got {steps} and {lr}")
    check_states([server, start, end], "scaffold", reference=local, reference_name="c_i")
    return {
        k: (
            local[k].double()
            - server[k].double()
            + (start[k].double() - end[k].double()) / (steps * lr)
        ).to(torch.float32)
        for k in local
    }


def server_control(
    server: AdapterState, deltas: Sequence[AdapterState], num_clients: int
) -> AdapterState:
    """``c ← c + (|S|/N) · mean_i Δc_i = c + Σ_i Δc_i / N`` over the round's clients S."""
    if num_clients < len(deltas) or num_clients <= 0:
        raise ValueError(f"{len(deltas)} control deltas from {num_clients} clients")
    if not deltas:
        return dict(server)
    check_states(deltas, "scaffold", reference=server, what="control delta", reference_name="c")
    return {
        k: (server[k].double() + sum(d[k].double() for d in deltas) / num_clients).to(torch.float32)
        for k in server
    }


def fednova(
    global_state: AdapterState, updates: Sequence[tuple[AdapterState, float, float]]
) -> AdapterState:
    """FedNova over ``(y_i, n_i, a_i)``: ``x + (Σ p_i a_i) · Σ p_i (y_i − x)/a_i``."""
    if not updates:
        raise ValueError("fednova needs at least one update")
    total = sum(float(n) for _, n, _ in updates)
    if total <= 0 or any(n < 0 or a <= 0 for _, n, a in updates):
        raise ValueError("weights should be non-negative with a positive sum, steps positive")
    check_states([s for s, _, _ in updates], "fednova", reference=global_state)
    tau_eff = sum(n * a for _, n, a in updates) / total
    out: AdapterState = {}
    for key, x in global_state.items():
        x64 = x.double()
        step = sum((n / total) * (s[key].double() - x64) / a for s, n, a in updates)
        out[key] = (x64 + tau_eff * step).to(x.dtype)
    return out


def fedexp_lr(global_state: AdapterState, updates: Sequence[tuple[AdapterState, float]]) -> float:
    """FedExP's server step size (Jhunjhunwala et al., 2023, "FedExP: Speeding Up Federated
    Averaging via Extrapolation", ICLR, eq. 9), weighted by ``p_i = n_i/Σn``:
    ``η = max(1, Σ_i p_i ‖Δ_i‖² / (2 (‖Σ_i p_i Δ_i‖² + ε)))`` with ``Δ_i = y_i − x``.

    When the clients agree, η = 1 (FedAvg); the more their updates point different ways
    (and cancel in the average), the further the server extrapolates along the average.
    """
    ps = normalised_weights([n for _, n in updates], "fedexp")
    check_states([s for s, _ in updates], "fedexp", reference=global_state)
    spread, mean_sq = 0.0, 0.0
    for key, x in global_state.items():
        deltas = [(p, s[key].double() - x.double()) for p, (s, _) in zip(ps, updates, strict=True)]
        spread += sum(p * float((d * d).sum()) for p, d in deltas)
        mean = torch.zeros_like(x, dtype=torch.float64)
        for p, d in deltas:
            mean += p * d
        mean_sq += float((mean * mean).sum())
    return max(1.0, spread / (2 * (mean_sq + FEDEXP_EPS)))


FEDEXP_EPS = 1e-3  # ε: keeps η finite when the clients' updates cancel exactly


def fedexp(
    global_state: AdapterState, updates: Sequence[tuple[AdapterState, float]]
) -> AdapterState:
    """``x + η·Σ_i p_i (y_i − x)`` with FedExP's ``η`` (``fedexp_lr``)."""
    eta = fedexp_lr(global_state, updates)
    total = float(sum(n for _, n in updates))
    out: AdapterState = {}
    for key, x in global_state.items():
        x64 = x.double()
        mean = sum((n / total) * (s[key].double() - x64) for s, n in updates)
        out[key] = (x64 + eta * mean).to(x.dtype)
    return out
