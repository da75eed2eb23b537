"""Which clients train in a round: a seeded draw that depends only on (seed, round)."""

from __future__ import annotations

import math

import numpy as np


def sample_clients(
    num_clients: int, fraction: float, min_clients: int, seed: int, rnd: int
) -> list[int]:
    """``max(min_clients, ceil(fraction·N))`` distinct client ids, sorted.

    Depending only on (seed, round) — not on earlier draws — makes a resumed run draw
    exactly what the uninterrupted run would have.
    """
    k = min(num_clients, max(min_clients, math.ceil(fraction * num_clients)))
    rng = np.random.default_rng([seed, rnd, 0x5A3])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
