"""Adaptive clipping: the clip norm S follows a quantile of the clients' update norms.

Andrew, Thakkar, McMahan, Ramaswamy (2021), "Differentially Private Learning with Adaptive
Clipping", NeurIPS, Alg. 1. Each round, with m sampled clients::

    b_c  = 1[‖Δ_c‖₂ ≤ S]                        (did client c's update fit under S?)
    b̃    = (Σ_c b_c + N(0, σ_b²)) / m            (the noisy fraction below S)
    S'   = S · exp(−η_C · (b̃ − γ))               (geometric step towards the γ-quantile)

The count has sensitivity ½ once centred (b_c − ½), so releasing it and the noisy sum of
clipped updates (noise σ_Δ·S) together is one Gaussian mechanism with multiplier σ where
``σ⁻² = σ_Δ⁻² + (2σ_b)⁻²`` (their Theorem 1). To spend the budget of a plain run with
multiplier σ, the deltas therefore get ``σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½)``, which needs
``σ_b > σ/2``; the paper's default is ``σ_b = m/20``. Flower's
``compute_adaptive_noise_params`` does the same split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def default_count_noise(clients_per_round: int) -> float:
    """The paper's default ``σ_b = m / 20``."""
    return clients_per_round / 20


def delta_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """``σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½)``: the deltas' share of a total multiplier σ."""
    if noise_multiplier == 0:
        return 0.0
    if noise_multiplier < 0 or count_noise <= noise_multiplier / 2:
        raise ValueError(
            f"the clipped-count noise σ_b = {count_noise:g} must exceed σ/2 = "
            f"{noise_multiplier / 2:g}; raise `privacy.count_noise_multiplier` or lower σ."
        )
    return (noise_multiplier**-2 - (2 * count_noise) ** -2) ** -0.5


def noisy_unclipped_fraction(
    norms: Sequence[float],
    clip_norm: float,
    count_noise: float,
    generator: torch.Generator,
    denominator: int | None = None,
) -> float:
    """``b̃ = (Σ_c 1[‖Δ_c‖ ≤ S] + N(0, σ_b²)) / m`` (m: ``denominator``, default the count)."""
    m = len(norms) if denominator is None else denominator
    if m <= 0:
        raise ValueError("adaptive clipping needs at least one sampled client")
    count = sum(n <= clip_norm for n in norms)
    noise = float(torch.randn((), dtype=torch.float64, generator=generator)) * count_noise
    return (count + noise) / m


def next_clip_norm(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, lr: float
) -> float:
    """``S' = S · exp(−η_C (b̃ − γ))``."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"the clip norm should be positive, got {clip_norm}.")
    return clip_norm * math.exp(-lr * (unclipped_fraction - target_quantile))
