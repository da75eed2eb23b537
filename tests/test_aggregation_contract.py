"""Contract over every registered aggregator, through the Strategy a loop would build."""

from __future__ import annotations

import pytest
import torch

from fedpeft.aggregation import aggregator_names, lora_pairs, lora_product
from fedpeft.config import ServerConfig
from fedpeft.server.strategy import strategy_from_config
from fedpeft.types import AdapterState


def _updates(n: int = 5) -> list[tuple[AdapterState, float]]:
    g = torch.Generator().manual_seed(0)
    shared_a = torch.randn(2, 4, generator=g)  # FFA-LoRA's frozen, shared A
    return [
        (
            {
                "encoder.layer.0.q.lora_A.weight": shared_a.clone(),
                "encoder.layer.0.q.lora_B.weight": torch.randn(3, 2, generator=g),
                "encoder.layer.1.out.adapter.bias": torch.randn(3, generator=g),
                "classifier.bias": torch.randn(2, generator=g),
            },
            float(c + 1),
        )
        for c in range(n)
    ]


def _proxy_loss(state: AdapterState) -> float:
    return 1.0 + sum(float(((v.double() - 0.1) ** 2).sum()) for v in state.values())


def _function(state: AdapterState) -> dict[str, torch.Tensor]:
    """What the adapter computes: B·A per LoRA module, every other tensor as is."""
    lora = {k for pair in lora_pairs(state) for k in pair}
    out = {k: v for k, v in state.items() if k not in lora}
    out.update(lora_product([(state, 1.0)]))
    return out


@pytest.mark.parametrize("name", aggregator_names())
def test_every_rule_is_permutation_invariant_pure_and_a_fixed_point(name: str) -> None:
    strategy = strategy_from_config(ServerConfig(aggregator=name), _proxy_loss, groups=True)
    updates = _updates()
    copies = [{k: v.clone() for k, v in s.items()} for s, _ in updates]
    a, b = _function(strategy.aggregate(updates)), _function(strategy.aggregate(updates[::-1]))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    for (state, _), copy in zip(updates, copies, strict=True):
        assert all(torch.equal(state[k], copy[k]) for k in state)
    first = updates[0][0]
    same = strategy.aggregate([(first, 1.0), (first, 3.0), (first, 2.0)])
    for key, value in _function(same).items():
        torch.testing.assert_close(value, _function(first)[key], rtol=1e-5, atol=1e-6)
    if strategy.partition is not None:
        labels = strategy.partition([s for s, _ in updates], [first] * len(updates))
        flipped = strategy.partition([s for s, _ in updates[::-1]], [first] * len(updates))
        assert len(labels) == len(updates)
        groups = {frozenset(i for i, x in enumerate(labels) if x == g) for g in set(labels)}
        n = len(updates) - 1
        assert groups == {
            frozenset(n - i for i, x in enumerate(flipped) if x == g) for g in set(flipped)
        }
