"""Aggregator registry: a config name → a pure function over weighted adapter states.

Most rules are ``list[(state, n_c)] → state``. A rule that needs more declares it with one
flag; the Strategy supplies the rest: ``needs_eval`` — the function is
``(updates, loss_fn) → state`` and the Strategy binds the server's proxy-loss callback;
``partition`` — ``(client states, their start states) → labels``, and the function runs once per
label (one global per group: clustered aggregation); ``fuse`` — after the per-group function,
the groups' models are fused by the server step of that name (``server.fusion``:
``fuse(models, proxy_batches) → {group: state}``, distillation across PEFT methods);
``linear`` — the rule is the weighted mean of the states, so loops that only see sums or
stale deltas (asynchronous FedBuff, secure aggregation) can run it; ``objective`` — the rule
has a client half that trains differently and exchanges tensors beside the adapter (SCAFFOLD's
control variates: ``client/scaffold.py``, with the server's ``c`` kept per group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fedpeft.aggregation.cluster import cluster_updates
from fedpeft.aggregation.fedavg import fedavg
from fedpeft.aggregation.layerwise import layerwise_importance
from fedpeft.aggregation.lora import exact_lora_svd, ffa_lora, hetlora_pad, weighted_lora
from fedpeft.aggregation.robust import coordinate_median, krum, multi_krum, trimmed_mean
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

Aggregator = Callable[[Sequence[tuple[AdapterState, float]]], AdapterState]
Partition = Callable[[Sequence[AdapterState], Sequence[AdapterState]], list[int]]
Fuse = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], dict[str, AdapterState]]
_REGISTRY: dict[str, Callable[..., AdapterState]] = {}


@dataclass(frozen=True)
class AggregatorParts:
    """What a rule needs besides ``list[(state, n_c)]`` (see the module docstring)."""

    freeze: tuple[str, ...] = ()
    needs_eval: bool = False
    partition: Partition | None = None
    fuse: str | None = None  # a server-side fusion step by name (``server.fusion``)
    linear: bool = False  # the rule is the weighted mean Σ p_c θ_c (what FedBuff's step and
    # secure aggregation, which see only sums, can stand in for)
    objective: str = ""  # the client half's name (TrainInstruction.objective), "" for none
    merges: bool = False  # the loop merges the round's LoRA product into the global and
    # restarts the LoRA (FLoRA: server/merge.py); the rule itself averages the other keys


_PARTS: dict[str, AggregatorParts] = {}


def register_aggregator(
    name: str,
    fn: Callable[..., AdapterState],
    freeze: tuple[str, ...] = (),
    *,
    needs_eval: bool = False,
    partition: Partition | None = None,
    fuse: str | None = None,
    linear: bool = False,
    objective: str = "",
    merges: bool = False,
) -> None:
    """Registers a rule; ``freeze`` names parameter parts its clients must keep fixed
    (the rule's client half, e.g. FFA-LoRA's shared A); the keywords are ``AggregatorParts``."""
    if name in _REGISTRY:
        raise ValueError(f"aggregator {name!r} is registered twice")
    _REGISTRY[name] = fn
    _PARTS[name] = AggregatorParts(freeze, needs_eval, partition, fuse, linear, objective, merges)


def client_freeze(name: str) -> tuple[str, ...]:
    return aggregator_parts(name).freeze


def aggregator_parts(name: str) -> AggregatorParts:
    get_aggregator(name)
    return _PARTS[name]


def aggregator_names() -> list[str]:
    return sorted(_REGISTRY)


def get_aggregator(name: str) -> Callable[..., AdapterState]:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`server.aggregator` is {name!r}, which is not a registered aggregator; "
            f"expected one of: {', '.join(aggregator_names())}."
        )
    return _REGISTRY[name]


register_aggregator("fedavg", fedavg, linear=True)
register_aggregator("weighted_lora", weighted_lora, linear=True)  # = FedAvg of A and B
register_aggregator("exact_lora_svd", exact_lora_svd)  # rank defaults to the clients' rank
register_aggregator("ffa_lora", ffa_lora, freeze=("lora_A",), linear=True)  # A stays fixed
register_aggregator("hetlora", hetlora_pad)  # norm-weighted zero-padding (mixed ranks)
register_aggregator("coordinate_median", coordinate_median)
register_aggregator("trimmed_mean", trimmed_mean)  # trim_fraction = 0.1
register_aggregator("krum", krum)  # num_byzantine = 1
register_aggregator("multi_krum", multi_krum)  # num_byzantine = 1, m = n − 1
register_aggregator("layerwise", layerwise_importance, needs_eval=True)  # temperature 0.05
register_aggregator("clustered", fedavg, partition=partial(cluster_updates, k=2, seed=0))
# FedAvg within each PEFT method's group, then the server's ensemble distillation
register_aggregator("kd_fusion", fedavg, fuse="distill")
# SCAFFOLD: FedAvg of the drift-corrected clients; the server's control c is kept per group
# and moved by c ← c + Σ Δc_i / N (aggregation.drift); not linear: it needs each Δc_i
register_aggregator("scaffold", fedavg, objective="scaffold")
# FLoRA: the head FedAvg-averaged here; the loop merges Σ p_c B_c A_c and restarts the LoRA
register_aggregator("flora", fedavg, merges=True)
