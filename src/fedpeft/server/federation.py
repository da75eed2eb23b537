"""Everything a loop runs on, in one value, and what a loop returns.

Both loops take ``(federation, state)`` and return a ``LoopResult``; the runtime builds the
``Federation`` (its pool, its model side, the run folder) and the initial or resumed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture
from fedpeft.server.protocols import (
    ClientPool,
    DurationFn,
    FusingModel,
    GlobalModel,
    Observer,
    ProxyModel,
)
from fedpeft.server.state import ServerState
from fedpeft.server.store import RunStore
from fedpeft.server.strategy import Strategy, strategy_from_config
from fedpeft.types import RoundRecord


@dataclass(frozen=True)
class Federation:
    """A run's configuration, its clients, the server's model, its folder and its hooks."""

    cfg: ExperimentConfig
    pool: ClientPool
    model: GlobalModel
    store: RunStore
    arch: Architecture | None = None  # the model's architecture (the allocation needs it)
    observer: Observer = field(default_factory=Observer)
    durations: DurationFn | None = None  # simulated round-trip seconds (asynchronous loop)

    def strategy(self, *, groups: bool) -> Strategy:
        """The configured strategy, refused up front when this runtime's model side lacks
        what its rule needs (a proxy set, a fusion step)."""
        proxy = self.model.proxy_loss if isinstance(self.model, ProxyModel) else None
        strategy = strategy_from_config(self.cfg.server, evaluate_proxy=proxy, groups=groups)
        if strategy.fuse is not None and not isinstance(self.model, FusingModel):
            raise FedpeftError(
                f"`server.aggregator` {self.cfg.server.aggregator!r} fuses method groups on "
                "the server, which this runtime's model side cannot; choose another aggregator."
            )
        return strategy


@dataclass(frozen=True)
class LoopResult:
    state: ServerState  # the server after the last round
    records: list[RoundRecord]
