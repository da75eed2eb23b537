"""Aggregator registry: a config name → a pure function over weighted adapter states."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedpeft.aggregation.fedavg import fedavg
from fedpeft.aggregation.lora import exact_lora_svd, ffa_lora, hetlora_pad, weighted_lora
from fedpeft.aggregation.robust import coordinate_median, krum, multi_krum, trimmed_mean
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

Aggregator = Callable[[Sequence[tuple[AdapterState, float]]], AdapterState]
_REGISTRY: dict[str, Aggregator] = {}


_CLIENT_FREEZE: dict[str, tuple[str, ...]] = {}


def register_aggregator(name: str, fn: Aggregator, freeze: tuple[str, ...] = ()) -> None:
    """Registers a rule; ``freeze`` names parameter parts its clients must keep fixed
    (the rule's client half, e.g. FFA-LoRA's shared A)."""
    if name in _REGISTRY:
        raise ValueError(f"aggregator {name!r} is registered twice")
    _REGISTRY[name] = fn
    _CLIENT_FREEZE[name] = freeze


def client_freeze(name: str) -> tuple[str, ...]:
    get_aggregator(name)
    return _CLIENT_FREEZE[name]


def aggregator_names() -> list[str]:
    return sorted(_REGISTRY)


def get_aggregator(name: str) -> Aggregator:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`server.aggregator` is {name!r}, which is not a registered aggregator; "
            f"expected one of: {', '.join(aggregator_names())}."
        )
    return _REGISTRY[name]


register_aggregator("fedavg", fedavg)
register_aggregator("weighted_lora", weighted_lora)
register_aggregator("exact_lora_svd", exact_lora_svd)  # rank defaults to the clients' rank
register_aggregator("ffa_lora", ffa_lora, freeze=("lora_A",))  # clients keep A fixed
register_aggregator("hetlora", hetlora_pad)  # norm-weighted zero-padding (mixed ranks)
register_aggregator("coordinate_median", coordinate_median)
register_aggregator("trimmed_mean", trimmed_mean)  # trim_fraction = 0.1
register_aggregator("krum", krum)  # num_byzantine = 1
register_aggregator("multi_krum", multi_krum)  # num_byzantine = 1, m = n − 1
