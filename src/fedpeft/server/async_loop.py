"""Asynchronous federation on a simulated clock: clients finish when they finish.

Up to ``server.max_concurrency`` clients train at once, each from the global version it was
sent. A deterministic event queue orders their replies by simulated finish time (the
federation's ``durations``: compute scaled by the device's FLOP/s plus bytes over its
bandwidth). Each reply goes through the same receive path as in the synchronous loop
(``receive.py``) and is buffered with its staleness ``τ = version now − version it started
from``; once ``server.buffer_size`` updates are buffered the server steps
(``staleness_update``: FedBuff with FedAsync's ``(1 + τ)^{−a}``), evaluates, writes a
``metrics.jsonl`` line with ``sim_time_s`` and checkpoints. ``run.rounds`` counts server
steps. A freed client slot goes to an idle client drawn by a seeded generator.

A checkpoint holds the clock, the generator and every client in flight (the state it
started from, its result and its record), so a resumed run continues exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fedpeft.aggregation import StaleUpdate, buffer_full, staleness_update
from fedpeft.compression import encode
from fedpeft.errors import FedpeftError
from fedpeft.server.configure import instruction_for
from fedpeft.server.federation import Federation, LoopResult
from fedpeft.server.protocols import DurationFn
from fedpeft.server.receive import Received, Sent, collect, guard_norms, step_norm
from fedpeft.server.record import round_record
from fedpeft.server.state import DEFAULT_GROUP, AsyncProgress, ServerState
from fedpeft.server.strategy import Strategy
from fedpeft.types import (
    AdapterState,
    ClientRecord,
    ClientStatus,
    ClientUpdate,
    RoundRecord,
    TrainInstruction,
)

log = logging.getLogger("fedpeft.server")


@dataclass(frozen=True, order=True)
class Event:
    """A client's reply arriving at ``finish_time``; ``seq`` (dispatch order) breaks ties."""

    finish_time: float
    seq: int
    client_id: int


class SimClock:
    """A deterministic priority queue of events; ``now`` is the last popped finish time."""

    def __init__(self, now: float = 0.0, seq: int = 0, events: list[Event] | None = None) -> None:
        self._heap: list[Event] = list(events or [])
        heapq.heapify(self._heap)
        self._seq = seq
        self.now = now

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

    @property
    def seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class _Flight:
    """A dispatched client: the version it started from, its event, and its result."""

    version: int
    event: Event
    received: Received


@dataclass
class _Run:
    """The loop's mutable state between events (never leaves this module)."""

    state: ServerState
    rng: np.random.Generator
    clock: SimClock = field(default_factory=SimClock)
    flights: dict[int, _Flight] = field(default_factory=dict)
    buffer: list[tuple[StaleUpdate, Received]] = field(default_factory=list)
    landed: list[ClientRecord] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)  # recent accepted norms per step (guard)
    dispatched: int = 0
    failures: int = 0  # consecutive failed or rejected replies
    idle: int = 0  # consecutive replies without an accepted update (skips included)
    down: tuple[int, bytes] | None = None  # the encoded global of one version, sent to many

    @property
    def version(self) -> int:
        return self.state.round


def run_async(fed: Federation, state: ServerState) -> LoopResult:
    """Runs server steps ``state.round + 1 … cfg.run.rounds`` asynchronously, checkpointing
    each."""
    cfg = fed.cfg
    strategy = fed.strategy(groups=False)
    if not strategy.linear:
        raise FedpeftError(
            f"`server.mode` 'async' steps with the staleness-aware FedBuff rule, which stands in "
            f"only for rules that are weighted means of the updates (fedavg, weighted_lora, "
            f"ffa_lora); `server.aggregator` is {cfg.server.aggregator!r}."
        )
    if fed.durations is None:
        raise FedpeftError("`server.mode` 'async' needs simulated durations from the runtime.")
    run = _restore(state, cfg.run.seed)
    records = []
    step_start = time.perf_counter()
    while run.version < cfg.run.rounds:
        _fill_slots(fed, strategy, run, fed.durations)
        if not _land(fed, run):
            continue
        run.state, record = _server_step(fed, strategy, run, step_start)
        fed.store.append_round(record)
        fed.store.save_checkpoint(_with_progress(run))
        records.append(record)
        fed.observer.on_round_end(record)
        run.buffer, run.landed, step_start = [], [], time.perf_counter()
    return LoopResult(_with_progress(run), records)


def _fill_slots(fed: Federation, strategy: Strategy, run: _Run, durations: DurationFn) -> None:
    """Dispatches seeded draws of idle clients until ``max_concurrency`` are in flight."""
    cfg = fed.cfg
    while len(run.flights) < (cfg.server.max_concurrency or cfg.data.num_clients):
        idle = [c for c in range(cfg.data.num_clients) if c not in run.flights]
        if not idle:
            return
        cid = int(run.rng.choice(idle))
        run.dispatched += 1  # the instruction's "round" is the dispatch number: a fresh seed
        ins = instruction_for(
            cfg, run.dispatched, cid, strategy.client_freeze, run_id=fed.store.root.name
        )
        if run.down is None or run.down[0] != run.version:
            run.down = (run.version, encode(run.state.adapter, {"round": run.version}))
        sent = Sent(ins, run.down[1], run.state.adapter)
        (received,) = collect(fed.pool, [sent], strategy.clip_norm)
        r = received.record
        seconds = durations(cid, run.version, r.metrics, r.bytes_down, _upload(received))
        event = run.clock.schedule(cid, float(seconds))
        run.flights[cid] = _Flight(run.version, event, received)


def _upload(received: Received) -> int:
    """The bytes the simulated clock charges for a reply: its tensors' bytes. The metadata's
    few hundred bytes are left out, as their length varies with measured timings and would
    make the clock, and so the order of events, irreproducible."""
    if received.update is None:
        return received.record.bytes_up
    return sum(t.numel() * t.element_size() for t in received.update.state.values())


def _land(fed: Federation, run: _Run) -> bool:
    """The next reply arrives: it is guarded, recorded and buffered; True when the buffer
    is full."""
    event = run.clock.pop()
    flight = run.flights.pop(event.client_id)
    staleness = run.version - flight.version
    (received,) = guard_norms([flight.received], fed.cfg.server.norm_guard, run.norms)
    metrics = {**received.record.metrics, "staleness": float(staleness)}
    record = replace(received.record, round=run.version + 1, metrics=metrics)
    run.landed.append(record)
    fed.observer.on_client_done(run.version + 1, record)
    if received.update is None:
        n = fed.cfg.data.num_clients
        run.idle += 1
        if not record.status.skipped:
            run.failures += 1
        if run.failures >= 3 * n:
            raise FedpeftError(
                f"async run: the last {run.failures} client replies all failed or were "
                f"rejected, e.g. {record.reason}."
            )
        if run.idle >= 50 * n:
            raise FedpeftError(
                f"async run: none of the last {run.idle} clients trained (e.g. "
                f"{record.status}: {record.reason}); check the devices' availability."
            )
        return False
    run.failures = run.idle = 0
    norm = step_norm(received)
    if norm is not None:
        run.norms = [*run.norms, norm][-4 * fed.cfg.server.buffer_size :]
    u = received.update
    start = flight.received.sent.start
    run.buffer.append((StaleUpdate(u.state, start, u.num_examples, staleness), received))
    return buffer_full([b for b, _ in run.buffer], fed.cfg.server.buffer_size)


def _server_step(
    fed: Federation, strategy: Strategy, run: _Run, step_start: float
) -> tuple[ServerState, RoundRecord]:
    """``θ^t = θ^{t−1} + η Σ_c (n_c s(τ_c)/Σn) Δ_c`` (then the server optimiser, if any)."""
    s, server = fed.cfg.server, run.state
    stepped = staleness_update(
        server.adapter, [b for b, _ in run.buffer], s.async_lr, s.staleness_exponent
    )
    opt_state = server.optimizer.get(DEFAULT_GROUP, {})
    if strategy.server_optimizer is None:
        adapter, opt = stepped, opt_state
    else:
        adapter, opt = strategy.server_optimizer(server.adapter, stepped, opt_state)
    last = server.sim_clock_s or 0.0
    server = server.evolve(
        adapters={DEFAULT_GROUP: adapter},
        optimizer={DEFAULT_GROUP: opt} if opt else {},
        round=run.version + 1,
        sim_clock_s=run.clock.now,
    )
    eval_start = time.perf_counter()
    evals = {DEFAULT_GROUP: fed.model.evaluate(server.adapter)}
    eval_time = time.perf_counter() - eval_start
    updates = [r.update for _, r in run.buffer if r.update is not None]
    examples = dict(server.examples)
    trained = sum(u.num_examples for u in updates)
    examples[DEFAULT_GROUP] = examples.get(DEFAULT_GROUP, 0) + trained
    server = server.evolve(examples=examples)
    return server, round_record(
        server.round,
        run.landed,
        updates,
        evals,
        DEFAULT_GROUP,
        wall_time_s=time.perf_counter() - step_start,
        eval_time_s=eval_time,
        sim_time_s=run.clock.now - last,
        sim_clock_s=run.clock.now,
    )


# ---- checkpointing the clock and the clients in flight ---------------------------------
def _with_progress(run: _Run) -> ServerState:
    """The server state with the loop's clock, generator and in-flight clients attached."""
    tensors: dict[str, AdapterState] = {}
    flights = []
    for cid, f in sorted(run.flights.items()):
        r = f.received
        tensors.setdefault(f"start-{f.version}", r.sent.start)
        if r.update is not None:
            tensors[f"update-{cid}"] = r.update.state
        flights.append(
            {
                "client_id": cid,
                "version": f.version,
                "finish_time": f.event.finish_time,
                "seq": f.event.seq,
                "instruction": asdict(r.sent.instruction),
                "record": asdict(r.record),
                "num_examples": r.update.num_examples if r.update else 0,
                "update_metrics": dict(r.update.metrics) if r.update else {},
            }
        )
    progress = AsyncProgress(
        now=run.clock.now,
        seq=run.clock.seq,
        dispatched=run.dispatched,
        failures=run.failures,
        idle=run.idle,
        rng=dict(run.rng.bit_generator.state),
        flights=flights,
        norms=list(run.norms),
    )
    return run.state.evolve(progress=progress, inflight=tensors)


def _restore(state: ServerState, seed: int) -> _Run:
    rng = np.random.default_rng([seed, 0xA5])
    p = state.progress
    if p is None:
        return _Run(state.evolve(progress=None, inflight={}), rng)
    try:
        rng.bit_generator.state = p.rng
        flights = {int(f["client_id"]): _flight(f, state.inflight) for f in p.flights}
    except (KeyError, TypeError, ValueError) as e:
        raise FedpeftError(
            f"the checkpoint's asynchronous progress is malformed ({e}); nothing was resumed."
        ) from None
    clock = SimClock(p.now, p.seq, [f.event for f in flights.values()])
    run = _Run(state.evolve(progress=None, inflight={}), rng, clock, flights)
    run.dispatched, run.failures, run.idle = p.dispatched, p.failures, p.idle
    run.norms = list(p.norms)
    return run


def _flight(raw: dict[str, Any], tensors: dict[str, AdapterState]) -> _Flight:
    """One in-flight client as ``_with_progress`` saved it (from a verified checkpoint)."""
    ins_raw = dict(raw["instruction"])
    ins = TrainInstruction(**{**ins_raw, "freeze": tuple(ins_raw["freeze"])})
    rec_raw = dict(raw["record"])
    record = ClientRecord(**{**rec_raw, "status": ClientStatus(rec_raw["status"])})
    version, cid = int(raw["version"]), int(raw["client_id"])
    update = None
    if record.status is ClientStatus.OK:
        metrics = {str(k): float(v) for k, v in dict(raw["update_metrics"]).items()}
        update = ClientUpdate(cid, tensors[f"update-{cid}"], int(raw["num_examples"]), metrics)
    sent = Sent(ins, b"", tensors[f"start-{version}"], record.config, record.tier)
    event = Event(float(raw["finish_time"]), int(raw["seq"]), cid)
    return _Flight(version, event, Received(sent, record, update))
