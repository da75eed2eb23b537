"""Aggregators: pure functions ``list[(AdapterState, weight)] → AdapterState``."""

from fedpeft.aggregation.fedavg import fedavg
from fedpeft.aggregation.lora import (
    exact_lora_svd,
    ffa_lora,
    hetlora_pad,
    lora_pairs,
    lora_product,
    stack_lora,
    svd_redistribute,
    truncate_rank,
    weighted_lora,
)
from fedpeft.aggregation.registry import (
    Aggregator,
    aggregator_names,
    client_freeze,
    get_aggregator,
    register_aggregator,
)
from fedpeft.aggregation.robust import (
    clip_deltas,
    clip_norms,
    coordinate_median,
    krum,
    multi_krum,
    trimmed_mean,
)
from fedpeft.aggregation.server_opt import FedAdam, FedAvgM, FedYogi, ServerOptimizer

__all__ = [
    "Aggregator",
    "FedAdam",
    "FedAvgM",
    "FedYogi",
    "ServerOptimizer",
    "aggregator_names",
    "client_freeze",
    "clip_deltas",
    "clip_norms",
    "coordinate_median",
    "exact_lora_svd",
    "fedavg",
    "ffa_lora",
    "get_aggregator",
    "hetlora_pad",
    "krum",
    "lora_pairs",
    "lora_product",
    "multi_krum",
    "register_aggregator",
    "stack_lora",
    "svd_redistribute",
    "trimmed_mean",
    "truncate_rank",
    "weighted_lora",
]
