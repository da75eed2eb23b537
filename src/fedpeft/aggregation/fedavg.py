"""FedAvg (McMahan et al., 2017): ``θ = Σ_c n_c θ_c / Σ_c n_c``, key by key."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpeft.aggregation.compat import check_states, normalised_weights
from fedpeft.types import AdapterState


def fedavg(updates: Sequence[tuple[AdapterState, float]]) -> AdapterState:
    """The weighted mean of adapter states; weights are example counts (any positive scale).

    Accumulates in float64 and returns each tensor in its input dtype. Inputs are untouched.
    """
    states = [state for state, _ in updates]
    check_states(states, "fedavg", hint="for mixed LoRA ranks use hetlora_pad or stack_lora")
    p = normalised_weights([w for _, w in updates], "fedavg")
    out: AdapterState = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, weight in zip(states, p, strict=True):  # in place: no float64 copies
            acc.add_(state[key], alpha=float(weight))
        out[key] = acc.to(ref.dtype)
    return out
