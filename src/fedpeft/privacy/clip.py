"""Client-level DP-FedAvg: clip each update's delta, add Gaussian noise to the sum.

DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language
Models", Alg. 1 with the fixed-denominator estimator), for the m clients of a round::

    Δ_c  = θ_c − θ_s                         (the update against the state it was served)
    Δ̃_c  = Δ_c · min(1, S / ‖Δ_c‖₂)          (whole-state L2 norm: one client moves ≤ S)
    Δ̄    = (Σ_c Δ̃_c + N(0, σ² S² I)) / m
    θ_s' = θ_s + Δ̄

Adding or removing one client changes ``Σ_c Δ̃_c`` by at most S, so the noisy sum is the
Gaussian mechanism with noise multiplier σ (the accountant's input). Central DP adds the
noise once, at the server; local DP adds N(0, σ² S² I) to each Δ̃_c on its client, before
it is encoded, so the server never sees a clean update. Weights are uniform: weighting by
example counts would let one client's weight raise the sensitivity.

The clipping itself is ``fedpeft.aggregation.clip_norms`` (one clipping rule in the
project). Every noise draw takes a seeded ``torch.Generator``; sums are in float64 and
inputs are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedpeft.aggregation import clip_norms
from fedpeft.types import AdapterState


def delta(state: AdapterState, served: AdapterState) -> AdapterState:
    """``Δ = θ_c − θ_s`` in float64 (keys must match)."""
    if state.keys() != served.keys():
        odd = sorted(state.keys() ^ served.keys())[0]
        raise ValueError(f"update and served state differ in key {odd!r}")
    return {k: v.to(torch.float64) - served[k].to(torch.float64) for k, v in state.items()}


def l2_norm(state: AdapterState) -> float:
    """``‖θ‖₂`` of the whole flattened state, in float64."""
    return math.sqrt(sum(float(v.to(torch.float64).pow(2).sum()) for v in state.values()))


def clip_delta(d: AdapterState, clip_norm: float) -> AdapterState:
    """``Δ · min(1, S / ‖Δ‖₂)`` over the whole state (float64 out)."""
    ((clipped, _),) = clip_norms([({k: v.to(torch.float64) for k, v in d.items()}, 1.0)], clip_norm)
    return clipped


def gaussian_noise(like: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """``N(0, std²)`` per coordinate, float64, drawn key by key in sorted key order."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std should be a finite value ≥ 0, got {std}.")
    return {
        k: torch.randn(like[k].shape, dtype=torch.float64, generator=generator) * std
        for k in sorted(like)
    }


def add_noise(state: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """``θ + N(0, std² I)``: the Gaussian mechanism on a (clipped) sum or delta."""
    noise = gaussian_noise(state, std, generator)
    return {k: v.to(torch.float64) + noise[k] for k, v in state.items()}


def privatize_local(
    d: AdapterState, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> AdapterState:
    """Local DP on the client, before encoding: ``clip(Δ, S) + N(0, σ² S² I)``."""
    return add_noise(clip_delta(d, clip_norm), noise_multiplier * clip_norm, generator)


@dataclass(frozen=True)
class ClipReport:
    """What the server learned while clipping (logged per round; norms are pre-noise)."""

    norms: list[float]  # ‖Δ_c‖₂ before clipping
    clipped: int  # how many had ‖Δ_c‖₂ > S
    clip_norm: float

    @property
    def unclipped_fraction(self) -> float:
        return 1.0 - self.clipped / max(len(self.norms), 1)


def dp_fedavg(
    served: AdapterState,
    states: Sequence[AdapterState],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    denominator: int | None = None,
    frozen: tuple[str, ...] = (),
) -> tuple[AdapterState, ClipReport]:
    """Central DP-FedAvg (module docstring): ``θ_s + (Σ clip(Δ_c) + N(0, σ²S²)) / m``.

    ``denominator`` m is the number of clients sampled this round (default: the number of
    updates); keeping it fixed when some fail keeps the estimator's sensitivity S/m.
    Keys containing a ``frozen`` part (a strategy's client half, e.g. FFA-LoRA's shared A,
    which validation keeps equal to the served value) are public and get no noise. The
    result has ``served``'s dtypes.
    """
    if not states:
        raise ValueError("dp_fedavg needs at least one update")
    m = len(states) if denominator is None else denominator
    if m < len(states):
        raise ValueError(f"denominator {m} is smaller than the {len(states)} updates")
    total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in served.items()}
    norms: list[float] = []
    for state in states:
        d = delta(state, served)
        norms.append(l2_norm(d))
        for k, v in clip_delta(d, clip_norm).items():
            total[k] += v
    private = {k: v for k, v in total.items() if not any(part in k for part in frozen)}
    noisy = total | add_noise(private, noise_multiplier * clip_norm, generator)
    out = {k: (v.to(torch.float64) + noisy[k] / m).to(v.dtype) for k, v in served.items()}
    return out, ClipReport(norms, sum(n > clip_norm for n in norms), clip_norm)
