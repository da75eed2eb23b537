"""A strategy composed from parts: an aggregation rule, an optional server optimiser, and
the client half some rules need (e.g. FFA-LoRA's frozen A) — no inheritance.

Rules that need more than ``list[(state, n_c)]`` (see ``aggregation.registry``) get it here:
a ``needs_eval`` rule gets the server's ``evaluate_proxy`` bound into ``aggregate``; a
``partition`` rule (clustered) and a ``fuse`` rule (distillation across PEFT methods) expose
those parts, which a loop holding several global adapters ("groups") calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fedpeft.aggregation import Aggregator, aggregator_parts, get_aggregator
from fedpeft.aggregation.registry import Fuse, Partition
from fedpeft.aggregation.server_opt import FedAdam, FedAvgM, FedYogi, ServerOptimizer
from fedpeft.config import ServerConfig
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState


@dataclass(frozen=True)
class Strategy:
    aggregate: Aggregator
    server_optimizer: ServerOptimizer | None = None
    client_freeze: tuple[str, ...] = ()  # parameter-name parts clients must not train
    partition: Partition | None = None  # (states, start states) → group labels; None: one group
    fuse: Fuse | None = None  # (models by group, proxy batches) → fused state by group
    clip_norm: float | None = None  # each update's Δ is clipped to this L2 norm on arrival


def strategy_from_config(
    cfg: ServerConfig,
    evaluate_proxy: Callable[[AdapterState], float] | None = None,
    *,
    groups: bool = False,
) -> Strategy:
    """The configured strategy for a loop that says what it supports: ``evaluate_proxy(state)
    → loss`` on the server's proxy set (needed by ``needs_eval`` rules, e.g. ``layerwise``),
    ``groups`` (it holds one global per group, needed by ``partition`` rules, e.g.
    ``clustered``). A rule the loop cannot run is refused instead of quietly running as
    another."""
    parts = aggregator_parts(cfg.aggregator)
    if parts.partition is not None and not groups:
        raise FedpeftError(
            f"`server.aggregator` {cfg.aggregator!r} keeps one global adapter per client "
            "group, which this runtime's round loop cannot hold yet; choose another aggregator."
        )
    aggregate = get_aggregator(cfg.aggregator)
    if parts.needs_eval:
        if evaluate_proxy is None:
            raise FedpeftError(
                f"`server.aggregator` {cfg.aggregator!r} weighs clients by a server-side "
                "proxy loss, but this runtime provides no proxy evaluation set; choose another "
                "aggregator."
            )
        aggregate = partial(aggregate, loss_fn=evaluate_proxy)
    return Strategy(
        aggregate=aggregate,
        server_optimizer=_optimizer(cfg),
        client_freeze=parts.freeze,
        partition=parts.partition,
        fuse=parts.fuse,
        clip_norm=cfg.clip_norm,
    )


def _optimizer(cfg: ServerConfig) -> ServerOptimizer | None:
    lr = {} if cfg.server_lr is None else {"server_lr": cfg.server_lr}
    try:
        if cfg.optimizer == "fedavgm":
            return FedAvgM(momentum=cfg.momentum, **lr)
        if cfg.optimizer == "fedadam":
            return FedAdam(beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau, **lr)
        if cfg.optimizer == "fedyogi":
            return FedYogi(beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau, **lr)
    except ValueError as e:
        raise FedpeftError(f"`server.{cfg.optimizer}`: {e}") from None
    return None
