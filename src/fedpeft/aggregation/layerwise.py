"""Layer-wise importance aggregation: each layer follows the clients that help it most.

The proposal's rule, per layer group l:

    ``θ^l = Σ_c w_c^l n_c θ_c^l / Σ_c w_c^l n_c``

``layerwise`` is that maths alone, given the weights. ``swap_importance`` estimates them from
validation performance on the server's proxy set (a callback ``loss_fn(state) → float``; the
server holds a few hundred labelled examples no client trains on). The estimator is a
*leave-one-in swap*: starting from the base ``θ̄`` (the round's FedAvg, i.e. what FedAvg would
ship), replace only layer l by client c's tensors and measure the proxy loss,

    ``g_c^l = (L(θ̄) − L(θ̄ with θ^l := θ_c^l)) / L(θ̄)``   (relative improvement, may be < 0)
    ``w_c^l = C · softmax_c(g_c^l / T)``

Why this estimator: it measures what the weight is used for — whether following client c at
layer l makes the aggregate better — on data the server controls, so a client cannot inflate
its own weight by reporting a number; the relative gain makes the temperature unit-free
(``T = 0.05``: a client whose layer lowers the loss by 5 % more than another's gets e× its
weight); the softmax keeps every weight positive, so no layer loses all its clients, and equal
gains give ``w = 1``: FedAvg exactly. ``T → ∞`` is FedAvg; ``T → 0`` picks the best client per
layer. Cost: ``1 + C·G`` proxy evaluations a round (G layer groups), on the server only.
A cheaper, client-reported alternative (each client's own validation loss) cannot tell layers
apart, which is the point of the rule, so it is not used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from fedpeft.aggregation.compat import check_states
from fedpeft.aggregation.fedavg import fedavg
from fedpeft.types import AdapterState

Updates = Sequence[tuple[AdapterState, float]]
LossFn = Callable[[AdapterState], float]

# BERT/RoBERTa ``encoder.layer.3.``, LLaMA ``layers.3.``, GPT-2 ``h.3.``, ViT/T5 ``block.3.``
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_HEAD = {"classifier", "score", "head", "lm_head", "pooler"}


def layer_of(key: str) -> str:
    """The group of a parameter key: ``layer.<i>`` for a numbered block, ``head`` for the task
    head (``classifier``, ``score``, …), ``other`` for the rest (embeddings, prompts)."""
    match = _LAYER.search(key)
    if match:
        return f"layer.{int(match.group(1))}"
    return "head" if _HEAD & set(key.split(".")) else "other"


def group_layers(keys: Sequence[str] | Mapping[str, object]) -> dict[str, list[str]]:
    """Layer group → its keys (sorted), groups sorted by layer number, then head, then other."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        groups.setdefault(layer_of(key), []).append(key)

    def order(name: str) -> tuple[int, int]:
        return (0, int(name.split(".")[1])) if name.startswith("layer.") else (1, name == "other")

    return {name: groups[name] for name in sorted(groups, key=order)}


def layerwise(updates: Updates, layer_weights: Sequence[Mapping[str, float]]) -> AdapterState:
    """``θ^l = Σ_c w_c^l n_c θ_c^l / Σ_c w_c^l n_c`` for every layer group l.

    ``layer_weights[c][l]`` is ``w_c^l`` (finite, ≥ 0; each layer needs a positive total).
    """
    check_states([s for s, _ in updates], "layerwise")
    if len(layer_weights) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(layer_weights)} layer-weight maps")
    out: AdapterState = {}
    for layer, keys in group_layers(updates[0][0]).items():
        try:
            weighted = [
                ({k: s[k] for k in keys}, float(n) * float(w[layer]))
                for (s, n), w in zip(updates, layer_weights, strict=True)
            ]
        except KeyError:
            raise ValueError(f"layer weights or an update lack layer group {layer!r}") from None
        if any(not math.isfinite(x) or x < 0 for _, x in weighted):
            raise ValueError(f"layer {layer!r}: weights w_c n_c must be finite and ≥ 0")
        out.update(fedavg(weighted))
    return {key: out[key] for key in updates[0][0]}


def swap_importance(
    updates: Updates,
    loss_fn: LossFn,
    temperature: float = 0.05,
    base: AdapterState | None = None,
) -> list[dict[str, float]]:
    """``w_c^l = C · softmax_c(g_c^l / T)`` from the proxy loss of one-layer swaps (see module).

    ``base`` defaults to the FedAvg of ``updates``; pass the current global to ask instead
    whether client c's layer l improves on the model every client started from.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` should be positive, got {temperature}.")
    base = fedavg(updates) if base is None else base
    base_loss = _finite_loss(loss_fn, base)
    scale = abs(base_loss) if base_loss != 0 else 1.0
    weights: list[dict[str, float]] = [{} for _ in updates]
    for layer, keys in group_layers(base).items():
        gains = []
        for state, _ in updates:
            swapped = {**base, **{k: state[k] for k in keys}}
            gains.append((base_loss - _finite_loss(loss_fn, swapped)) / scale)
        soft = torch.softmax(torch.tensor(gains, dtype=torch.float64) / temperature, dim=0)
        for c, w in enumerate(soft.tolist()):
            weights[c][layer] = len(updates) * w
    return weights


def layerwise_importance(
    updates: Updates, loss_fn: LossFn, temperature: float = 0.05
) -> AdapterState:
    """The registered rule: ``swap_importance`` weights, then ``layerwise``."""
    return layerwise(updates, swap_importance(updates, loss_fn, temperature))


def _finite_loss(loss_fn: LossFn, state: AdapterState) -> float:
    loss = float(loss_fn(state))
    if not math.isfinite(loss):
        raise ValueError(f"the proxy loss is {loss}; layer importance needs finite losses")
    return loss
