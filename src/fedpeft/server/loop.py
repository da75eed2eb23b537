"""The round loop: sample → allocate → configure → collect → validate → aggregate →
evaluate → checkpoint.

It reaches clients only through a ``ClientPool`` (in-process or Flower) and the model
only through a ``GlobalModel``, so the same loop drives every runtime. The server holds
one global adapter per group (``server.groups``): one, ``global``, unless the allocation
gives clients different configurations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from fedpeft.aggregation.hetero import aggregate_partial, lift
from fedpeft.compression import encode
from fedpeft.config import ExperimentConfig
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture
from fedpeft.profiling import ResourceProfile
from fedpeft.server.assign import DEFAULT_GROUP, Assigner, Assignment, client_infos, options_json
from fedpeft.server.collect import ClientPool, Request, client_record, collect
from fedpeft.server.groups import GroupBook
from fedpeft.server.multi import aggregate_clusters, fuse_groups, served_group
from fedpeft.server.sampling import sample_clients
from fedpeft.server.store import ALLOCATIONS, RunStore
from fedpeft.server.strategy import Strategy, strategy_from_config
from fedpeft.types import AdapterState, ClientRecord, ClientUpdate, RoundRecord, TrainInstruction

log = logging.getLogger("fedpeft.server")


class GlobalModel(Protocol):
    """The server's copy of the model: central evaluation and configurations' templates."""

    def evaluate(
        self, state: AdapterState, method: str = "", options: str = "{}"
    ) -> dict[str, float]: ...

    def template(self, method: str, options: str) -> AdapterState: ...


class Observer:
    """Progress hooks; the default does nothing. The CLI's draws progress bars."""

    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None: ...
    def on_client_done(self, rnd: int, record: ClientRecord) -> None: ...
    def on_round_end(self, record: RoundRecord) -> None: ...


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round (and checkpoints)."""

    adapters: dict[str, AdapterState]  # group → its global adapter
    optimizer: dict[str, AdapterState] = field(default_factory=dict)  # group → buffers
    extra: dict[str, Any] = field(default_factory=dict)  # JSON: gains, last evals, clock

    @property
    def main(self) -> str:
        return str(self.extra.get("main", DEFAULT_GROUP))

    @property
    def adapter(self) -> AdapterState:
        """The main group's global adapter (the only one in a homogeneous run)."""
        return self.adapters[self.main]


@dataclass(frozen=True)
class LoopResult:
    state: AdapterState  # the main group's
    records: list[RoundRecord]
    server: ServerState | None = None


@dataclass
class _Round:
    """Mutable bookkeeping of one round in progress."""

    rnd: int
    adapters: dict[str, AdapterState]
    extra: dict[str, Any]
    views: dict[int, AdapterState] = field(default_factory=dict)
    assigned: dict[int, Assignment] = field(default_factory=dict)
    records: dict[int, ClientRecord] = field(default_factory=dict)
    accepted: dict[int, ClientUpdate] = field(default_factory=dict)
    tiers: dict[int, str] = field(default_factory=dict)
    clip_norm: float | None = None

    def done(self, record: ClientRecord, observer: Observer) -> None:
        record = replace(record, tier=self.tiers.get(record.client_id, ""))
        self.records[record.client_id] = record
        observer.on_client_done(self.rnd, record)


def instruction_for(
    cfg: ExperimentConfig,
    rnd: int,
    client_id: int,
    freeze: tuple[str, ...] = (),
    assignment: Assignment | None = None,
) -> TrainInstruction:
    c = cfg.client
    cand = assignment.candidate if assignment else None
    return TrainInstruction(
        round=rnd,
        client_id=client_id,
        epochs=c.epochs,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.fixed_lr,
        weight_decay=c.weight_decay,
        proximal_mu=c.proximal_mu,
        label_skew=c.label_skew,
        label_skew_tau=c.label_skew_tau,
        head_lr=c.head_lr,
        seed=cfg.run.seed,
        freeze=freeze,
        method=cand.method if cand else "",
        options=options_json(cand.options) if cand else "{}",
        group=assignment.group if assignment else DEFAULT_GROUP,
    )


def run_rounds(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    store: RunStore,
    state: ServerState,
    start_round: int,
    observer: Observer | None = None,
    arch: Architecture | None = None,
) -> LoopResult:
    """Runs rounds ``start_round … cfg.run.rounds``, checkpointing after each."""
    observer = observer or Observer()
    proxy_loss = getattr(model, "proxy_loss", None)
    strategy = strategy_from_config(cfg.server, evaluate_proxy=proxy_loss, groups=True)
    assigner = Assigner(cfg, arch) if arch is not None else Assigner(cfg, _no_arch())
    assigner.load_json(state.extra.get("gain", {}))
    if assigner.enabled and (
        strategy.partition is not None
        or proxy_loss is not None
        and cfg.server.aggregator == "layerwise"
    ):
        raise FedpeftError(
            f"`server.aggregator` {cfg.server.aggregator!r} needs one configuration for every "
            "client; it cannot run with `allocation.enabled` (use per-method groups instead)."
        )
    book = GroupBook(model)
    book.load_json(state.extra.get("members"))
    records = []
    for rnd in range(start_round, cfg.run.rounds + 1):
        state, record = run_round(cfg, strategy, pool, model, state, rnd, observer, assigner, book)
        store.append_round(record)
        if assigner.enabled:
            store.append_jsonl(ALLOCATIONS, assigner.decisions_json(rnd))
        store.save_checkpoint(rnd, state.adapters, state.optimizer, state.extra)
        records.append(record)
        observer.on_round_end(record)
    return LoopResult(state.adapter, records, state)


def _no_arch() -> Architecture:
    raise FedpeftError("allocation needs the model's architecture; pass `arch` to run_rounds.")


def run_round(
    cfg: ExperimentConfig,
    strategy: Strategy,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    rnd: int,
    observer: Observer,
    assigner: Assigner,
    book: GroupBook,
) -> tuple[ServerState, RoundRecord]:
    start = time.perf_counter()
    sampled = sample_clients(
        cfg.data.num_clients, cfg.server.fraction, cfg.server.min_clients, cfg.run.seed, rnd
    )
    observer.on_round_start(rnd, sampled)
    work = _Round(rnd, dict(server.adapters), dict(server.extra), clip_norm=strategy.clip_norm)
    requests = _configure(cfg, strategy, pool, assigner, book, work, sampled, observer)
    collect(pool, requests, work, observer)
    failed = [r for r in work.records.values() if r.status == "failed"]
    if failed and len(failed) == len(requests) == len(sampled):
        raise FedpeftError(f"round {rnd}: every sampled client failed, e.g. {failed[0].reason}.")
    before = _baseline(model, book, server, work, assigner.enabled)
    server = _aggregate_groups(strategy, server, work, cfg.data.num_clients)
    fused = fuse_groups(strategy, model, book, server.adapters)
    server = ServerState(fused, server.optimizer, server.extra)
    eval_start = time.perf_counter()
    groups = _evaluate(model, book, server)
    eval_time = time.perf_counter() - eval_start
    server = _observe(assigner, book, server, work, groups, before)
    clients = [work.records[c] for c in sampled]
    sim = _sim_time(clients, assigner.config.deadline_s)
    clock = None if sim is None else float(server.extra.get("sim_clock_s", 0.0)) + sim
    if clock is not None:
        server = ServerState(
            server.adapters, server.optimizer, server.extra | {"sim_clock_s": clock}
        )
    accepted = list(work.accepted.values())
    n = sum(u.num_examples for u in accepted)
    record = RoundRecord(
        round=rnd,
        sampled=list(sampled),
        accepted=len(accepted),
        rejected=len(sampled) - len(accepted),
        bytes_down=sum(c.bytes_down for c in clients),
        bytes_up=sum(c.bytes_up for c in clients),
        train_loss=sum(u.metrics.get("loss", 0.0) * u.num_examples for u in accepted) / max(n, 1),
        eval=groups.get(server.main, {}),
        wall_time_s=time.perf_counter() - start,
        eval_time_s=eval_time,
        client_time_s=sum(c.metrics.get("train_time_s", 0.0) for c in clients),
        clients=clients,
        groups=groups if len(groups) > 1 else {},
        sim_time_s=sim,
        sim_clock_s=clock,
    )
    return server, record


def _configure(
    cfg: ExperimentConfig,
    strategy: Strategy,
    pool: ClientPool,
    assigner: Assigner,
    book: GroupBook,
    work: _Round,
    sampled: Sequence[int],
    observer: Observer,
) -> list[Request]:
    """Each sampled client's assignment, view of its group's global and instruction."""
    resources = getattr(pool, "resources", None)
    if resources is not None:
        work.tiers = {cid: getattr(resources(cid), "tier", "") for cid in sampled}
    infos = _client_infos(cfg, pool, sampled) if assigner.enabled else None
    assigned = assigner.assign(infos) if infos is not None else _default(assigner, sampled)
    requests: list[Request] = []
    for cid in sampled:
        a = assigned[cid]
        if strategy.partition is not None:  # clustered: served by its cluster's global
            a = replace(a, group=served_group(work.extra, cid, a.group))
        ins = instruction_for(cfg, work.rnd, cid, strategy.client_freeze, a)
        if a.candidate is None:
            work.done(client_record(ins, "unassigned", a.reason, 0, 0, 0, {}), observer)
            continue
        work.adapters[a.group], work.views[cid] = book.serve(work.adapters, a)
        work.assigned[cid] = a
        requests.append((ins, encode(work.views[cid], {"round": work.rnd})))
    return requests


def _default(assigner: Assigner, sampled: Sequence[int]) -> dict[int, Assignment]:
    return {cid: assigner.fixed(cid) for cid in sampled}


def _client_infos(cfg: ExperimentConfig, pool: ClientPool, sampled: Sequence[int]) -> list[Any]:
    resources = getattr(pool, "resources", None)
    data = getattr(pool, "data_profile", None)
    if resources is None or data is None:
        raise FedpeftError(
            "`allocation.enabled` needs clients that report their resources and data profile; "
            "this runtime's clients do not."
        )
    devices: list[ResourceProfile] = [resources(c) for c in sampled]
    profiles: list[DataProfile] = [data(c) for c in sampled]
    return client_infos(cfg, sampled, devices, profiles)


def _aggregate_groups(
    strategy: Strategy, server: ServerState, work: _Round, num_clients: int
) -> ServerState:
    """Per group: the rule over its clients' (lifted) updates, then the server optimiser.
    A clustered rule regroups this round's clients by cluster instead."""
    adapters, optimizer = dict(work.adapters), dict(server.optimizer)
    if strategy.partition is not None and len(work.accepted) >= 2:
        groups = {c: a.group for c, a in work.assigned.items()}
        adapters, extra = aggregate_clusters(
            strategy, adapters, work.accepted, work.views, groups, work.extra, num_clients
        )
        return ServerState(adapters, optimizer, dict(server.extra) | extra)
    by_group: dict[str, list[tuple[AdapterState, float]]] = {}
    for cid, update in work.accepted.items():
        a = work.assigned[cid]
        lifted = lift(update.state, adapters[a.group], a.alpha)
        by_group.setdefault(a.group, []).append((lifted, float(update.num_examples)))
    if not by_group:
        log.warning("round %d: no update was accepted; the global adapters are unchanged", work.rnd)
    for group, updates in sorted(by_group.items()):
        current = adapters[group]
        try:
            aggregated = aggregate_partial(updates, current, strategy.aggregate)
        except ValueError as e:  # a rule's precondition; the round must not crash the run
            log.warning(
                "round %d: aggregation of group %s failed (%s); unchanged", work.rnd, group, e
            )
            continue
        if strategy.server_optimizer is None:
            adapters[group] = aggregated
            continue
        opt_state = optimizer.get(group, {})
        if not _fits(opt_state, current):
            opt_state = {}  # the envelope grew: its buffers start afresh
        adapters[group], optimizer[group] = strategy.server_optimizer(
            current, aggregated, opt_state
        )
    return ServerState(adapters, optimizer, dict(server.extra))


def _fits(opt_state: AdapterState, state: AdapterState) -> bool:
    return all(
        key.split("/", 1)[-1] in state and value.shape == state[key.split("/", 1)[-1]].shape
        for key, value in opt_state.items()
    )


def _evaluate(
    model: GlobalModel, book: GroupBook, server: ServerState
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for group in sorted(server.adapters):
        state, method, options = book.eval_state(group, server.adapters[group])
        out[group] = model.evaluate(state, method, options)
    return out


def _baseline(
    model: GlobalModel, book: GroupBook, server: ServerState, work: _Round, enabled: bool
) -> dict[str, float]:
    """Each trained group's accuracy before this round's update (for the gain R learns)."""
    if not enabled:
        return {}
    last = dict(server.extra.get("last_accuracy", {}))
    for group in {a.group for a in work.assigned.values()} - set(last):
        state, method, options = book.eval_state(group, work.adapters[group])
        last[group] = model.evaluate(state, method, options).get("accuracy", 0.0)
    return last


def _observe(
    assigner: Assigner,
    book: GroupBook,
    server: ServerState,
    work: _Round,
    groups: dict[str, dict[str, float]],
    before: dict[str, float],
) -> ServerState:
    """Gains update R; the main group is the one that trained on the most examples."""
    extra = dict(server.extra)
    examples: dict[str, int] = {}
    for cid, update in work.accepted.items():
        group = served_group(server.extra, cid, work.assigned[cid].group)  # clusters regroup
        examples[group] = examples.get(group, 0) + update.num_examples
    if assigner.enabled:
        for group, metrics in groups.items():
            members = [
                a.candidate
                for c, a in work.assigned.items()
                if a.group == group and c in work.accepted
            ]
            if members and group in before:
                assigner.observe(
                    [m for m in members if m is not None], metrics["accuracy"] - before[group]
                )
        extra["gain"] = assigner.state_json()
        extra["last_accuracy"] = {g: m["accuracy"] for g, m in groups.items()}
    extra["members"] = book.to_json()
    total = dict(extra.get("examples", {}))
    for group, n in examples.items():
        total[group] = total.get(group, 0) + n
    extra["examples"] = total
    alive = sorted(g for g in total if g in server.adapters)
    if alive:
        extra["main"] = max(alive, key=lambda g: total[g])
    return ServerState(server.adapters, server.optimizer, extra)


def _sim_time(clients: list[ClientRecord], deadline: float) -> float | None:
    """The round's simulated duration: the slowest finished client, or the deadline."""
    times = [c.sim_time_s for c in clients if c.sim_time_s is not None]
    if not times and not any(c.status in ("straggler", "offline") for c in clients):
        return None
    if any(c.status == "straggler" for c in clients):
        return deadline
    finished = [c.sim_time_s for c in clients if c.status == "ok" and c.sim_time_s is not None]
    return max(finished, default=0.0)
