"""Asynchronous federation on a simulated clock: clients finish when they finish.

Up to ``server.max_concurrency`` clients train at once, each from the global version it was
sent. A deterministic event queue orders their replies by simulated finish time
(``duration_fn`` says how long a client's round trip takes: compute scaled by its FLOP/s plus
bytes over its bandwidth, from the runtime). Each reply is validated as in the synchronous loop
and buffered with its staleness ``τ = version now − version it started from``; once
``server.buffer_size`` replies are buffered the server steps (``staleness_update``: FedBuff with
FedAsync's ``(1 + τ)^{−a}``), evaluates, writes a ``metrics.jsonl`` line with ``sim_time_s`` and
checkpoints. ``run.rounds`` counts server steps. A freed client slot goes to an idle client
drawn by a seeded generator, so a run is reproducible. Clients still in flight when the run
ends (or at a checkpoint) are not saved: a resumed run starts them afresh.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from fedpeft.aggregation import StaleUpdate, buffer_full, staleness_update
from fedpeft.compression import encode
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.server.assign import DEFAULT_GROUP
from fedpeft.server.collect import ClientPool
from fedpeft.server.loop import (
    GlobalModel,
    LoopResult,
    Observer,
    ServerState,
    instruction_for,
)
from fedpeft.server.store import RunStore
from fedpeft.server.strategy import Strategy, strategy_from_config
from fedpeft.server.validate import RejectedUpdate, clip_update, validate_reply
from fedpeft.types import AdapterState, ClientRecord, ClientUpdate, RoundRecord, TrainInstruction

log = logging.getLogger("fedpeft.server")

DurationFn = Callable[[int, int, dict[str, float], int, int], float]
"""``(client_id, version, reply_metrics, bytes_down, bytes_up) → simulated seconds``."""

ASYNC_AGGREGATORS = ("fedavg", "weighted_lora", "ffa_lora")  # rules the async step reproduces


@dataclass(frozen=True, order=True)
class Event:
    """A client's reply arriving at ``finish_time``; ``seq`` (dispatch order) breaks ties."""

    finish_time: float
    seq: int
    client_id: int


class SimClock:
    """A deterministic priority queue of events; ``now`` is the last popped finish time."""

    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = 0
        self.now = 0.0

    def schedule(self, client_id: int, duration: float) -> Event:
        if not (math.isfinite(duration) and duration >= 0):
            raise FedpeftError(
                f"the simulated duration of client {client_id}'s round trip is {duration}; "
                "the runtime's duration function must return finite seconds ≥ 0."
            )
        event = Event(self.now + duration, self._seq, client_id)
        self._seq += 1
        heapq.heappush(self._heap, event)
        return event

    def pop(self) -> Event:
        event = heapq.heappop(self._heap)
        self.now = event.finish_time
        return event

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class _Flight:
    """A dispatched client: the version it started from, and its (not yet seen) result."""

    version: int
    start: AdapterState
    update: ClientUpdate | None
    record: ClientRecord


@dataclass
class _Run:
    """The loop's mutable state between events (never leaves this module)."""

    state: ServerState
    version: int
    rng: np.random.Generator
    clock: SimClock = field(default_factory=SimClock)
    flights: dict[int, _Flight] = field(default_factory=dict)
    buffer: list[tuple[StaleUpdate, ClientUpdate]] = field(default_factory=list)
    landed: list[ClientRecord] = field(default_factory=list)
    dispatched: int = 0
    failures: int = 0
    down: tuple[int, bytes] | None = None  # the encoded global of one version, sent to many


def run_async(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    store: RunStore,
    state: ServerState,
    duration_fn: DurationFn,
    observer: Observer | None = None,
    start_round: int = 1,
) -> LoopResult:
    """Runs server steps ``start_round … cfg.run.rounds`` asynchronously, checkpointing each."""
    observer = observer or Observer()
    if cfg.server.aggregator not in ASYNC_AGGREGATORS:
        raise FedpeftError(
            f"`server.mode` 'async' steps with the staleness-aware FedBuff rule, which stands in "
            f"for {', '.join(ASYNC_AGGREGATORS)}; `server.aggregator` is "
            f"{cfg.server.aggregator!r}."
        )
    strategy = strategy_from_config(cfg.server)
    run = _Run(state, start_round - 1, np.random.default_rng([cfg.run.seed, 0xA5]))
    records: list[RoundRecord] = []
    step_start = time.perf_counter()
    while run.version < cfg.run.rounds:
        _fill_slots(cfg, strategy, pool, run, duration_fn)
        if not _land(cfg, run, observer):
            continue
        run.version += 1
        run.state, rec = _server_step(cfg, strategy, model, run, step_start)
        store.append_round(rec)
        store.save_checkpoint(run.version, run.state.adapters, run.state.optimizer, run.state.extra)
        records.append(rec)
        observer.on_round_end(rec)
        run.buffer, run.landed, step_start = [], [], time.perf_counter()
    return LoopResult(run.state.adapter, records, run.state)


def _fill_slots(
    cfg: ExperimentConfig, strategy: Strategy, pool: ClientPool, run: _Run, duration_fn: DurationFn
) -> None:
    """Dispatches seeded draws of idle clients until ``max_concurrency`` are in flight."""
    while len(run.flights) < (cfg.server.max_concurrency or cfg.data.num_clients):
        idle = [c for c in range(cfg.data.num_clients) if c not in run.flights]
        if not idle:
            return
        cid = int(run.rng.choice(idle))
        run.dispatched += 1  # the instruction's "round" is the dispatch number: a fresh seed
        ins = instruction_for(cfg, run.dispatched, cid, strategy.client_freeze)
        if run.down is None or run.down[0] != run.version:
            run.down = (run.version, encode(run.state.adapter, {"round": run.version}))
        start = run.state.adapter
        update, record = _fit(pool, ins, run.down[1], start, strategy.clip_norm)
        seconds = duration_fn(cid, run.version, record.metrics, record.bytes_down, record.bytes_up)
        run.clock.schedule(cid, float(seconds))
        run.flights[cid] = _Flight(run.version, start, update, record)


def _land(cfg: ExperimentConfig, run: _Run, observer: Observer) -> bool:
    """The next reply arrives: it is recorded and buffered; True when the buffer is full."""
    event = run.clock.pop()
    flight = run.flights.pop(event.client_id)
    staleness = run.version - flight.version
    metrics = {**flight.record.metrics, "staleness": float(staleness)}
    record = replace(flight.record, round=run.version + 1, metrics=metrics)
    run.landed.append(record)
    observer.on_client_done(run.version + 1, record)
    if flight.update is None:
        run.failures += 1
        if run.failures >= 3 * cfg.data.num_clients:
            raise FedpeftError(
                f"async run: the last {run.failures} client replies all failed or were "
                f"rejected, e.g. {record.reason}."
            )
        return False
    run.failures = 0
    u = flight.update
    run.buffer.append((StaleUpdate(u.state, flight.start, u.num_examples, staleness), u))
    return buffer_full([b for b, _ in run.buffer], cfg.server.buffer_size)


def _fit(
    pool: ClientPool,
    ins: TrainInstruction,
    down: bytes,
    start: AdapterState,
    clip_norm: float | None = None,
) -> tuple[ClientUpdate | None, ClientRecord]:
    """One round trip; a failing client or a bad reply is logged and recorded, never raised."""

    def record(
        status: str, reason: str, up: int, n: int, metrics: dict[str, float]
    ) -> ClientRecord:
        return ClientRecord(ins.round, ins.client_id, status, reason, n, len(down), up, metrics)

    try:
        reply = pool.fit(ins, down)
    except Exception as e:  # noqa: BLE001 - a failing client must not stop the run
        log.warning("async: client %d failed: %s: %s", ins.client_id, type(e).__name__, e)
        return None, record("failed", f"{type(e).__name__}: {e}", 0, 0, {})
    try:
        update = validate_reply(reply, start, ins, pool.num_examples(ins.client_id))
        update, norm = clip_update(update, start, clip_norm)
    except RejectedUpdate as e:
        log.warning("async: update from client %d rejected: %s", ins.client_id, e)
        return None, record("rejected", str(e), len(reply), 0, {})
    ok = record("ok", "", len(reply), update.num_examples, update.metrics)
    return update, replace(ok, update_norm=norm)


def _server_step(
    cfg: ExperimentConfig, strategy: Strategy, model: GlobalModel, run: _Run, step_start: float
) -> tuple[ServerState, RoundRecord]:
    """``θ^t = θ^{t−1} + η Σ_c (n_c s(τ_c)/Σn) Δ_c`` (then the server optimiser, if any)."""
    s, server, landed = cfg.server, run.state, run.landed
    stepped = staleness_update(
        server.adapter, [b for b, _ in run.buffer], s.async_lr, s.staleness_exponent
    )
    if strategy.server_optimizer is None:
        adapter, opt = stepped, server.optimizer.get(DEFAULT_GROUP, {})
    else:
        opt_state = server.optimizer.get(DEFAULT_GROUP, {})
        adapter, opt = strategy.server_optimizer(server.adapter, stepped, opt_state)
    last = float(server.extra.get("sim_clock_s", 0.0))
    extra = server.extra | {"sim_clock_s": run.clock.now}
    server = ServerState({DEFAULT_GROUP: adapter}, {DEFAULT_GROUP: opt} if opt else {}, extra)
    eval_start = time.perf_counter()
    metrics = model.evaluate(server.adapter)
    eval_time = time.perf_counter() - eval_start
    updates = [u for _, u in run.buffer]
    n = sum(u.num_examples for u in updates)
    return server, RoundRecord(
        round=run.version,
        sampled=[c.client_id for c in landed],
        accepted=len(updates),
        rejected=len(landed) - len(updates),
        bytes_down=sum(c.bytes_down for c in landed),
        bytes_up=sum(c.bytes_up for c in landed),
        train_loss=sum(u.metrics.get("loss", 0.0) * u.num_examples for u in updates) / max(n, 1),
        eval=metrics,
        wall_time_s=time.perf_counter() - step_start,
        eval_time_s=eval_time,
        client_time_s=sum(c.metrics.get("train_time_s", 0.0) for c in landed),
        clients=landed,
        sim_time_s=run.clock.now - last,
        sim_clock_s=run.clock.now,
    )
