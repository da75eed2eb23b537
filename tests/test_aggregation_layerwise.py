"""Layer-wise importance aggregation: the maths against numpy, the estimator by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.aggregation import (
    fedavg,
    get_aggregator,
    group_layers,
    layer_of,
    layerwise,
    layerwise_importance,
    swap_importance,
)
from fedpeft.types import AdapterState

KEYS = [
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight",
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight",
    "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight",
    "base_model.model.classifier.bias",
]


def _updates(seed: int, n: int = 3) -> list[tuple[AdapterState, float]]:
    g = torch.Generator().manual_seed(seed)
    return [({k: torch.randn(2, 3, generator=g) for k in KEYS}, float(c + 2)) for c in range(n)]


def test_layer_groups_for_bert_llama_and_others() -> None:
    assert layer_of(KEYS[0]) == layer_of(KEYS[1]) == "layer.0"
    assert layer_of("base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight") == "layer.12"
    assert layer_of("model.layers.3.mlp.down_proj.adapter.up.bias") == "layer.3"
    assert layer_of("base_model.model.score.weight") == "head"
    assert layer_of("classifier.weight") == "head"
    assert layer_of("prompt_encoder.default.embedding.weight") == "other"
    groups = group_layers(KEYS + ["layers.10.x", "layers.2.x", "emb.weight"])
    assert list(groups) == ["layer.0", "layer.1", "layer.2", "layer.10", "head", "other"]
    assert groups["layer.0"] == sorted(KEYS[:2])


def test_layerwise_matches_numpy() -> None:
    updates = _updates(0)
    weights = [
        {"layer.0": 1.0, "layer.1": 0.2, "head": 3.0},
        {"layer.0": 0.5, "layer.1": 0.0, "head": 1.0},
        {"layer.0": 2.0, "layer.1": 1.0, "head": 0.1},
    ]
    out = layerwise(updates, weights)
    assert list(out) == KEYS
    for key in KEYS:
        layer = layer_of(key)
        w = [n * wc[layer] for (_, n), wc in zip(updates, weights, strict=True)]
        expected = np.average([s[key].numpy() for s, _ in updates], axis=0, weights=w)
        np.testing.assert_allclose(out[key].numpy(), expected, rtol=1e-6)


def test_layerwise_invariants() -> None:
    updates = _updates(1)
    ones = [dict.fromkeys(group_layers(KEYS), 1.0) for _ in updates]
    plain = fedavg(updates)
    for key, value in layerwise(updates, ones).items():
        torch.testing.assert_close(value, plain[key])
    weights = [
        {layer: float(c + i + 1) for i, layer in enumerate(group_layers(KEYS))}
        for c in range(len(updates))
    ]
    out, rev = layerwise(updates, weights), layerwise(updates[::-1], weights[::-1])
    for key in out:
        torch.testing.assert_close(out[key], rev[key])
    same = [(updates[0][0], 1.0), (updates[0][0], 4.0)]
    for key, value in layerwise(same, weights[:2]).items():
        torch.testing.assert_close(value, updates[0][0][key])
    with pytest.raises(ValueError, match="lack layer group"):
        layerwise(updates, [{"layer.0": 1.0}] * 3)
    with pytest.raises(ValueError, match="positive"):
        layerwise(updates, [dict.fromkeys(group_layers(KEYS), 0.0)] * 3)


def _quadratic(target: AdapterState):
    """Proxy loss ``L(θ) = 1 + Σ_k ‖θ_k − t_k‖²`` (numpy, so it does not share torch code)."""
    return lambda s: 1.0 + sum(float(np.sum((s[k].numpy() - target[k].numpy()) ** 2)) for k in s)


def test_swap_importance_matches_a_hand_computation() -> None:
    updates = _updates(2)
    target = {k: torch.full((2, 3), 0.5) for k in KEYS}
    loss = _quadratic(target)
    temperature = 0.3
    weights = swap_importance(updates, loss, temperature)
    base = {
        k: np.average([s[k].numpy() for s, _ in updates], axis=0, weights=[2, 3, 4]) for k in KEYS
    }
    base_loss = 1 + sum(np.sum((base[k] - 0.5) ** 2) for k in KEYS)
    for layer, keys in group_layers(KEYS).items():
        gains = []
        for s, _ in updates:
            swapped = {k: (s[k].numpy() if k in keys else base[k]) for k in KEYS}
            gains.append(
                (base_loss - (1 + sum(np.sum((swapped[k] - 0.5) ** 2) for k in KEYS))) / base_loss
            )
        e = np.exp(np.array(gains) / temperature)
        np.testing.assert_allclose([w[layer] for w in weights], 3 * e / e.sum(), rtol=1e-6)


def test_each_layer_follows_the_client_that_is_right_there() -> None:
    """Client 0 is right at layer 0, client 1 at layer 1 and the head: the rule beats FedAvg."""
    target = {k: torch.zeros(2, 3) for k in KEYS}
    g = torch.Generator().manual_seed(3)
    good0 = {
        k: (torch.zeros(2, 3) if layer_of(k) == "layer.0" else torch.randn(2, 3, generator=g))
        for k in KEYS
    }
    good1 = {
        k: (torch.randn(2, 3, generator=g) if layer_of(k) == "layer.0" else torch.zeros(2, 3))
        for k in KEYS
    }
    updates = [(good0, 1.0), (good1, 1.0)]
    loss = _quadratic(target)
    weights = swap_importance(updates, loss, 0.05)
    assert weights[0]["layer.0"] > 1.9 and weights[1]["layer.1"] > 1.9 and weights[1]["head"] > 1.9
    out = layerwise_importance(updates, loss, 0.05)
    assert loss(out) < 0.5 * loss(fedavg(updates))
    same = [(good0, 1.0), (good0, 3.0)]
    for key, value in get_aggregator("layerwise")(same, loss_fn=loss).items():
        torch.testing.assert_close(value, good0[key])
    with pytest.raises(ValueError, match="finite"):
        swap_importance(updates, lambda s: float("nan"))


def test_strategy_binds_the_proxy_callback_or_refuses_without_one() -> None:
    from fedpeft.config import ServerConfig
    from fedpeft.errors import FedpeftError
    from fedpeft.server.strategy import strategy_from_config

    cfg = ServerConfig(aggregator="layerwise")
    with pytest.raises(FedpeftError, match="proxy"):
        strategy_from_config(cfg)
    updates = _updates(4)
    loss = _quadratic({k: torch.zeros(2, 3) for k in KEYS})
    out = strategy_from_config(cfg, evaluate_proxy=loss).aggregate(updates)
    for key, value in layerwise_importance(updates, loss).items():
        torch.testing.assert_close(out[key], value)
    plain = strategy_from_config(ServerConfig())
    assert plain.partition is None and plain.fuse is None
