"""Aggregators: pure functions ``list[(AdapterState, weight)] → AdapterState``."""

from fedpeft.aggregation.fedavg import fedavg
from fedpeft.aggregation.registry import (
    Aggregator,
    aggregator_names,
    get_aggregator,
    register_aggregator,
)

__all__ = ["Aggregator", "aggregator_names", "fedavg", "get_aggregator", "register_aggregator"]
