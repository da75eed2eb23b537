"""FedAvg (McMahan et al., 2017): ``θ = Σ_c n_c θ_c / Σ_c n_c``, key by key."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpeft.types import AdapterState


def fedavg(updates: Sequence[tuple[AdapterState, float]]) -> AdapterState:
    """The weighted mean of adapter states; weights are example counts (any positive scale).

    Accumulates in float64 and returns each tensor in its input dtype. Inputs are untouched.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = float(sum(w for _, w in updates))
    if total <= 0:
        raise ValueError(f"fedavg weights must sum to a positive value, got {total}")
    keys = updates[0][0].keys()
    out: AdapterState = {}
    for key in keys:
        ref = updates[0][0][key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for i, (state, weight) in enumerate(updates):
            if state.keys() != keys or state[key].shape != ref.shape:
                raise ValueError(
                    f"fedavg needs equal keys and shapes; update {i} differs at {key!r} "
                    "(mixed LoRA ranks: use hetlora_pad or stack_lora)"
                )
            acc += state[key].to(torch.float64) * (weight / total)
        out[key] = acc.to(ref.dtype)
    return out
