"""The round loop: sample → configure → collect → validate → aggregate → evaluate → checkpoint.

It reaches clients only through a ``ClientPool`` (in-process or Flower) and the model
only through a ``GlobalModel``, so the same loop drives every runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fedpeft.compression import encode
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.server.sampling import sample_clients
from fedpeft.server.store import RunStore
from fedpeft.server.strategy import Strategy, strategy_from_config
from fedpeft.server.validate import RejectedUpdate, validate_reply
from fedpeft.types import AdapterState, ClientRecord, ClientUpdate, RoundRecord, TrainInstruction

log = logging.getLogger("fedpeft.server")


class ClientPool(Protocol):
    """How the server reaches clients: bytes in, bytes out."""

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes: ...

    def num_examples(self, client_id: int) -> int | None:
        """How many examples the client reported having (None: unknown)."""
        ...


class GlobalModel(Protocol):
    """The server's copy of the model, for central evaluation and export."""

    def evaluate(self, state: AdapterState) -> dict[str, float]: ...


class Observer:
    """Progress hooks; the default does nothing. The CLI's draws progress bars."""

    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None: ...
    def on_client_done(self, rnd: int, record: ClientRecord) -> None: ...
    def on_round_end(self, record: RoundRecord) -> None: ...


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round (and checkpoints)."""

    adapter: AdapterState
    optimizer: AdapterState = field(default_factory=dict)  # server-optimiser buffers


@dataclass(frozen=True)
class LoopResult:
    state: AdapterState
    records: list[RoundRecord]


def instruction_for(
    cfg: ExperimentConfig, rnd: int, client_id: int, freeze: tuple[str, ...] = ()
) -> TrainInstruction:
    c = cfg.client
    return TrainInstruction(
        round=rnd,
        client_id=client_id,
        epochs=c.epochs,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        weight_decay=c.weight_decay,
        proximal_mu=c.proximal_mu,
        seed=cfg.run.seed,
        freeze=freeze,
    )


def run_rounds(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    store: RunStore,
    state: ServerState,
    start_round: int,
    observer: Observer | None = None,
) -> LoopResult:
    """Runs rounds ``start_round … cfg.run.rounds``, checkpointing after each."""
    observer = observer or Observer()
    strategy = strategy_from_config(cfg.server)
    records = []
    for rnd in range(start_round, cfg.run.rounds + 1):
        state, record = run_round(cfg, strategy, pool, model, state, rnd, observer)
        store.append_round(record)
        store.save_checkpoint(rnd, state.adapter, state.optimizer)
        records.append(record)
        observer.on_round_end(record)
    return LoopResult(state.adapter, records)


def run_round(
    cfg: ExperimentConfig,
    strategy: Strategy,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    rnd: int,
    observer: Observer,
) -> tuple[ServerState, RoundRecord]:
    start = time.perf_counter()
    sampled = sample_clients(
        cfg.data.num_clients, cfg.server.fraction, cfg.server.min_clients, cfg.run.seed, rnd
    )
    observer.on_round_start(rnd, sampled)
    state = server.adapter
    down = encode(state, {"round": rnd})
    accepted: list[ClientUpdate] = []
    clients: list[ClientRecord] = []
    instructions = [instruction_for(cfg, rnd, cid, strategy.client_freeze) for cid in sampled]
    for instruction, reply in zip(instructions, _replies(pool, instructions, down), strict=True):
        update, client_record = _collect(pool, instruction, reply, len(down), state)
        if update is not None:
            accepted.append(update)
        clients.append(client_record)
        observer.on_client_done(rnd, client_record)
    if clients and all(c.status == "failed" for c in clients):
        raise FedpeftError(f"round {rnd}: every sampled client failed, e.g. {clients[0].reason}.")
    if accepted:
        try:
            server = _aggregate(strategy, server, accepted)
        except ValueError as e:  # a rule's precondition; the round must not crash the run
            log.warning(
                "round %d: aggregation failed (%s); the global adapter is unchanged", rnd, e
            )
        state = server.adapter
    else:
        log.warning("round %d: no update was accepted; the global adapter is unchanged", rnd)
    eval_start = time.perf_counter()
    metrics = model.evaluate(state)
    eval_time = time.perf_counter() - eval_start
    n = sum(u.num_examples for u in accepted)
    record = RoundRecord(
        round=rnd,
        sampled=list(sampled),
        accepted=len(accepted),
        rejected=len(sampled) - len(accepted),
        bytes_down=sum(c.bytes_down for c in clients),
        bytes_up=sum(c.bytes_up for c in clients),
        train_loss=sum(u.metrics.get("loss", 0.0) * u.num_examples for u in accepted) / max(n, 1),
        eval=metrics,
        wall_time_s=time.perf_counter() - start,
        eval_time_s=eval_time,
        client_time_s=sum(c.metrics.get("train_time_s", 0.0) for c in clients),
        clients=clients,
    )
    return server, record


def _aggregate(
    strategy: Strategy, server: ServerState, accepted: list[ClientUpdate]
) -> ServerState:
    """The rule's aggregate, then (optionally) the server optimiser's step towards it."""
    aggregated = strategy.aggregate([(u.state, float(u.num_examples)) for u in accepted])
    if strategy.server_optimizer is None:
        return ServerState(aggregated, server.optimizer)
    adapter, opt_state = strategy.server_optimizer(server.adapter, aggregated, server.optimizer)
    return ServerState(adapter, opt_state)


def _replies(
    pool: ClientPool, instructions: list[TrainInstruction], down: bytes
) -> Iterator[bytes | Exception]:
    """Each client's reply, or why it has none: all at once where the pool can send a
    round's messages together (``fit_many``, e.g. Flower), else one by one."""
    fit_many = getattr(pool, "fit_many", None)
    if fit_many is not None:
        yield from fit_many([(ins, down) for ins in instructions])
        return
    for ins in instructions:
        try:
            yield pool.fit(ins, down)
        except Exception as e:  # noqa: BLE001 - a failing client must not stop the round
            yield e


def _collect(
    pool: ClientPool,
    ins: TrainInstruction,
    reply: bytes | Exception,
    down: int,
    state: AdapterState,
) -> tuple[ClientUpdate | None, ClientRecord]:
    """One client's round trip; a failure or a bad reply is logged and the round goes on."""
    if isinstance(reply, Exception):
        e = reply
        log.warning(
            "round %d: client %d failed: %s: %s", ins.round, ins.client_id, type(e).__name__, e
        )
        return None, _record(ins, "failed", f"{type(e).__name__}: {e}", down, 0, 0, {})
    try:
        update = validate_reply(reply, state, ins, pool.num_examples(ins.client_id))
    except RejectedUpdate as e:
        log.warning("round %d: update from client %d rejected: %s", ins.round, ins.client_id, e)
        return None, _record(ins, "rejected", str(e), down, len(reply), 0, {})
    record = _record(ins, "ok", "", down, len(reply), update.num_examples, update.metrics)
    return update, record


def _record(
    ins: TrainInstruction,
    status: str,
    reason: str,
    down: int,
    up: int,
    n: int,
    metrics: dict[str, float],
) -> ClientRecord:
    return ClientRecord(
        round=ins.round,
        client_id=ins.client_id,
        status=status,
        reason=reason,
        num_examples=n,
        bytes_down=down,
        bytes_up=up,
        metrics=metrics,
    )
