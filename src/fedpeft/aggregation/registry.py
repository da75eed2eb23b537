"""Aggregator registry: a config name → a pure function over weighted adapter states."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedpeft.aggregation.fedavg import fedavg
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

Aggregator = Callable[[Sequence[tuple[AdapterState, float]]], AdapterState]
_REGISTRY: dict[str, Aggregator] = {}


def register_aggregator(name: str, fn: Aggregator) -> None:
    if name in _REGISTRY:
        raise ValueError(f"aggregator {name!r} is registered twice")
    _REGISTRY[name] = fn


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
