"""A strategy composed from parts: an aggregation rule, an optional server optimiser, and
the client half some rules need (e.g. FFA-LoRA's frozen A) — no inheritance."""

from __future__ import annotations

from dataclasses import dataclass

from fedpeft.aggregation import Aggregator, client_freeze, get_aggregator
from fedpeft.aggregation.server_opt import FedAdam, FedAvgM, FedYogi, ServerOptimizer
from fedpeft.config import ServerConfig
from fedpeft.errors import FedpeftError


@dataclass(frozen=True)
class Strategy:
    aggregate: Aggregator
    server_optimizer: ServerOptimizer | None = None
    client_freeze: tuple[str, ...] = ()  # parameter-name parts clients must not train


def strategy_from_config(cfg: ServerConfig) -> Strategy:
    return Strategy(
        aggregate=get_aggregator(cfg.aggregator),
        server_optimizer=_optimizer(cfg),
        client_freeze=client_freeze(cfg.aggregator),
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
