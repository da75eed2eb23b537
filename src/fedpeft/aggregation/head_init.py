"""FedNCM head initialisation (Legate et al., 2023, "Guiding The Last Layer in Federated
Learning with Pre-Trained Models", NeurIPS): before round 1 the clients send their class
feature sums ``s_{k,c}`` and counts ``n_{k,c}`` (``client/features.py``); the server adds
them up and starts the classifier at the nearest-class-mean rule instead of at random:

    μ_c = Σ_k s_{k,c} / Σ_k n_{k,c},   ḡ = Σ_c Σ_k s_{k,c} / Σ_c Σ_k n_{k,c}
    W_c = (μ_c − ḡ) / ‖μ_c − ḡ‖,       b_c = −W_c · ḡ

so the logit of class c is the length of the centred feature ``h − ḡ`` along the centred
class mean's direction (a head without bias uses ``W_c = μ_c / ‖μ_c‖``). Classes that no
client holds keep their initial rows. Federated training then starts from a head that
already separates the classes, which matters most when there are many of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpeft.types import AdapterState

HEAD_MODULES = ("classifier", "score")
STATS_SUM = "feature_stats/sum"
STATS_COUNT = "feature_stats/count"


def sum_stats(stats: Sequence[AdapterState]) -> AdapterState:
    """The clients' sums and counts added up (float64)."""
    if not stats:
        raise ValueError("no feature statistics to add up")
    for s in stats:
        if s.keys() != {STATS_SUM, STATS_COUNT}:
            raise ValueError(f"feature statistics should hold {STATS_SUM} and {STATS_COUNT}")
        if s[STATS_SUM].shape != stats[0][STATS_SUM].shape or s[STATS_COUNT].shape != (
            s[STATS_SUM].shape[0],
        ):
            raise ValueError("feature statistics differ in shape")
    return {
        key: torch.stack([s[key].double() for s in stats]).sum(0)
        for key in (STATS_SUM, STATS_COUNT)
    }


def head_keys(state: AdapterState) -> tuple[str, str | None]:
    """The adapter-state keys of the classifier's weight and bias (None: no bias)."""
    weights = [k for k in state if k.endswith(".weight") and _in_head(k)]
    if len(weights) != 1:
        raise ValueError(f"expected one classifier weight in the adapter state, found {weights}")
    bias = weights[0].removesuffix(".weight") + ".bias"
    return weights[0], bias if bias in state else None


def _in_head(key: str) -> bool:
    return bool(set(key.split(".")) & set(HEAD_MODULES))


def ncm_head(state: AdapterState, stats: AdapterState) -> AdapterState:
    """``state`` with its classifier set to the nearest-class-mean rule of ``stats``."""
    w_key, b_key = head_keys(state)
    sums, counts = stats[STATS_SUM].double(), stats[STATS_COUNT].double()
    weight = state[w_key]
    if sums.shape != weight.shape:
        raise ValueError(f"statistics are {tuple(sums.shape)}, the head {tuple(weight.shape)}")
    held = counts > 0
    if not bool(held.any()):
        raise ValueError("no client holds any example")
    means = sums / counts.clamp_min(1)[:, None]
    out = dict(state)
    new_w = weight.double().clone()
    if b_key is None:
        new_w[held] = _unit(means[held])
        out[w_key] = new_w.to(weight.dtype)
        return out
    centre = sums.sum(0) / counts.sum()
    new_w[held] = _unit(means[held] - centre)
    new_b = state[b_key].double().clone()
    new_b[held] = -(new_w[held] @ centre)
    out[w_key], out[b_key] = new_w.to(weight.dtype), new_b.to(state[b_key].dtype)
    return out


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
