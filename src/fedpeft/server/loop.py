"""The synchronous round loop: sample → plan → collect → guard → aggregate → fuse →
head refresh (``server.head_refresh``, or its bias alone: ``server.bias_refresh``) →
evaluate (every ``eval.every`` rounds and the last) → observe → record → checkpoint.

It reaches clients only through the federation's ``ClientPool`` and the model only through
its ``GlobalModel`` (``protocols.py``), so the same loop drives every runtime. The server
holds one global adapter per group: one, ``global``, unless the allocation gives clients
different configurations or clustered aggregation splits them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch

from fedpeft.aggregation.fednova import normalise_work
from fedpeft.aggregation.hetero import aggregate_partial, lift
from fedpeft.allocation import Candidate
from fedpeft.errors import FedpeftError
from fedpeft.privacy import BudgetExceeded, PrivacyLedger
from fedpeft.server.assign import Assigner
from fedpeft.server.configure import RoundPlan, plan_round
from fedpeft.server.federation import Federation, LoopResult
from fedpeft.server.groups import GroupBook
from fedpeft.server.head_init import refresh_head
from fedpeft.server.head_when import bias_refresh_due, refresh_due
from fedpeft.server.merge import merged_adapters
from fedpeft.server.multi import aggregate_clusters, fuse_groups
from fedpeft.server.personal import (
    clients_due,
    evaluate_clients,
    evaluating_pool,
    training_plan,
)
from fedpeft.server.private import (
    account,
    central_generator,
    check_budget,
    start_ledger,
    with_client_dp,
    working_ledger,
)
from fedpeft.server.protocols import GlobalModel
from fedpeft.server.receive import FitClock, Received, collect, guard_norms
from fedpeft.server.record import evaluation_due, round_record
from fedpeft.server.sampling import sample_clients
from fedpeft.server.scaffold import SCAFFOLD, updated_controls
from fedpeft.server.secure import SecureSum, secure_collect, secure_view, weighted_loss
from fedpeft.server.state import ServerState
from fedpeft.server.store import ALLOCATIONS, PERSONAL
from fedpeft.server.strategy import Strategy
from fedpeft.types import AdapterState, ClientRecord, ClientStatus, ClientUpdate, RoundRecord

log = logging.getLogger("fedpeft.server")


def run_rounds(fed: Federation, state: ServerState) -> LoopResult:
    """Runs rounds ``state.round + 1 … cfg.run.rounds``, checkpointing after each."""
    cfg = fed.cfg
    strategy = fed.strategy(groups=True)
    assigner = Assigner(cfg, fed.arch)
    assigner.restore(state.gain)
    if assigner.enabled and (strategy.partition is not None or strategy.needs_eval):
        raise FedpeftError(
            f"`server.aggregator` {cfg.server.aggregator!r} needs one configuration for every "
            "client; it cannot run with `allocation.enabled` (use per-method groups instead)."
        )
    book = GroupBook(fed.model, state.members)
    state = start_ledger(cfg, fed.pool, state)
    if cfg.data.client_test_fraction > 0:
        evaluating_pool(fed)  # refused now, not after the first rounds
    records: list[RoundRecord] = []
    for rnd in range(state.round + 1, cfg.run.rounds + 1):
        try:
            state, record = run_round(fed, strategy, assigner, book, state, rnd)
        except BudgetExceeded as e:  # refused before anything was sent
            log.warning("round %d refused: %s", rnd, e)
            return LoopResult(state, records, stopped=f"round {rnd} refused: {e}")
        fed.store.append_round(record)
        _abort_if_never_aggregated([*records, record], cfg.server.aggregator)
        if clients_due(cfg, rnd):  # clients score their own models on their own data
            fed.store.append_jsonl(PERSONAL, evaluate_clients(fed, state, rnd))
        if assigner.enabled:
            fed.store.append_jsonl(ALLOCATIONS, assigner.decisions_json(rnd))
        fed.store.save_checkpoint(state)
        records.append(record)
        fed.observer.on_round_end(record)
    return LoopResult(state, records)


def run_round(
    fed: Federation,
    strategy: Strategy,
    assigner: Assigner,
    book: GroupBook,
    state: ServerState,
    rnd: int,
) -> tuple[ServerState, RoundRecord]:
    cfg, start = fed.cfg, time.perf_counter()
    s = cfg.server
    sampled = sample_clients(cfg.data.num_clients, s.fraction, s.min_clients, cfg.run.seed, rnd)
    ledger = working_ledger(state)
    check_budget(ledger, cfg, fed.pool, sampled)
    fed.observer.on_round_start(rnd, sampled)
    personal = training_plan(cfg, fed.arch, state.adapters)
    run_id = fed.store.root.name
    plan = plan_round(
        cfg, strategy, fed.pool, assigner, book, state, rnd, sampled, run_id, fed.initial, personal
    )
    secure = cfg.privacy.secure_aggregation
    plan.sent = with_client_dp(plan.sent, ledger, secure)
    if plan.bits:  # compression.bits_up = "adaptive": each client's width, explained
        rows = [{"round": rnd, "client": c, "bits": b.to_json()} for c, b in plan.bits.items()]
        fed.store.append_jsonl(ALLOCATIONS, rows)
    for r in plan.unassigned:
        fed.observer.on_client_done(rnd, r.record)
    done = lambda record: fed.observer.on_client_done(rnd, record)  # noqa: E731
    fit_clock = FitClock()
    summed: SecureSum | None = None
    if secure:  # the server learns only the sum (server/secure.py)
        summed = secure_collect(fed.pool, plan.sent, cfg.privacy, cfg.run.seed, done, fit_clock)
        received = plan.unassigned + summed.received
    else:
        received = plan.unassigned + guard_norms(
            collect(fed.pool, plan.sent, strategy.clip_norm, done, fit_clock), s.norm_guard
        )
    _abort_if_all_failed(received, rnd)
    accepted = {r.sent.instruction.client_id: r for r in received if r.update is not None}
    count = len(accepted) if summed is None else summed.survivors * (summed.total is not None)
    quorum = count >= s.min_clients
    if not quorum:
        log.warning(
            "round %d: %d update(s) accepted, fewer than server.min_clients=%d; the global "
            "adapters are unchanged",
            rnd,
            count,
            s.min_clients,
        )
    before = _baseline(fed.model, book, state, plan) if assigner.enabled and quorum else {}
    dp_info: dict[str, float] = {}
    failed: dict[str, str] = {}  # group → why its aggregation failed
    if quorum:
        gen = central_generator(cfg.run.seed, rnd)
        if summed is not None:
            state = _aggregate_secure(strategy, state, plan, summed, ledger, gen, len(sampled))
        else:
            central = _central_dp(ledger, gen, len(sampled), strategy, dp_info)
            normalise = assigner.enabled and assigner.config.normalise_work
            dilute = assigner.enabled and assigner.config.dilutes
            keep = assigner.enabled and assigner.config.rank_tail == "keep"
            state = _aggregate(
                strategy,
                state,
                plan,
                accepted,
                cfg.data.num_clients,
                central,
                normalise,
                dilute,
                keep,
                failed,
            )
        if strategy.client_objective == SCAFFOLD:  # c ← c + Σ Δc_i / N, per group
            controls = updated_controls(
                state.controls, plan.adapters, accepted, cfg.data.num_clients, s.norm_guard
            )
            state = state.evolve(controls=controls)
        if strategy.merges:  # FLoRA: Σ p_c B_c A_c into the merged sums, a fresh LoRA
            merged = merged_adapters(state.adapters, accepted, cfg.run.seed, rnd)
            state = state.evolve(adapters=merged)
    else:
        state = state.evolve(adapters=plan.adapters)
    state = state.evolve(adapters=fuse_groups(strategy, fed.model, book, state.adapters))
    refreshed: dict[str, object] = {}
    part = "head" if refresh_due(cfg, rnd) else "bias" if bias_refresh_due(cfg, rnd) else ""
    if part:  # the head (or its bias) re-calibrated under the trained adapter
        if quorum:
            state = state.evolve(members=book.snapshot())  # the groups as this round left them
            try:
                state, refreshed = refresh_head(
                    cfg, fed.pool, fed.model, state, run_id, fed.arch, rnd, part
                )
            except FedpeftError as e:  # e.g. Flower: fewer replies than server.min_clients
                log.warning("round %d: the %s is not re-calibrated (%s)", rnd, part, e)
        else:
            log.warning("round %d: no quorum, so the head is not re-calibrated", rnd)
    eval_start = time.perf_counter()
    evals = evaluate_groups(fed.model, book, state) if evaluation_due(cfg, rnd) else {}
    eval_time = time.perf_counter() - eval_start
    state = _observe(assigner, book, state, plan, accepted, evals, before)
    clients = sorted((r.record for r in received), key=lambda c: sampled.index(c.client_id))
    sim = _sim_time(clients, assigner.config.deadline_s)
    clock = None if sim is None else (state.sim_clock_s or 0.0) + sim
    state = state.evolve(round=rnd, sim_clock_s=clock, members=book.snapshot(), privacy=ledger)
    record = round_record(
        rnd,
        clients,
        [r.update for r in accepted.values() if r.update is not None],
        evals,
        state.main,
        wall_time_s=time.perf_counter() - start,
        eval_time_s=eval_time,
        fit_time_s=fit_clock.seconds,
        sim_time_s=sim,
        sim_clock_s=clock,
        quorum=quorum,
        secure=None if summed is None else (count, weighted_loss(summed)),
    )
    if summed is not None:
        record = replace(record, secure_aggregation=summed.info)
    if failed:
        record = replace(record, aggregation_failed=failed)
    if refreshed:  # its traffic counts in the round's bytes, and is shown apart
        down, up = int(refreshed["bytes_down"]), int(refreshed["bytes_up"])  # type: ignore[call-overload]
        record = replace(
            record,
            head_refresh=refreshed,
            bytes_down=record.bytes_down + down,
            bytes_up=record.bytes_up + up,
        )
    if ledger is not None:
        dp = account(ledger, cfg, fed.pool, clients, released=quorum) | dp_info
        record = replace(record, privacy=dp)
    return state, record


def _abort_if_never_aggregated(records: Sequence[RoundRecord], aggregator: str) -> None:
    """Stops a run whose first two rounds both failed to aggregate: the rule cannot take
    this model's adapter (a precondition of the rule, not a bad reply), so every later round
    would fail the same way while the run trains nothing. A failure after a round that
    aggregated is only logged (the round keeps its global)."""
    if len(records) != 2 or not all(r.aggregation_failed for r in records):
        return
    group, why = next(iter(records[-1].aggregation_failed.items()))
    raise FedpeftError(
        f"`server.aggregator` {aggregator!r} failed to aggregate in rounds "
        f"{records[0].round} and {records[1].round} ({group}: {why}), so the global adapter "
        "would never change; choose an aggregator that takes this model's adapter."
    )


def _abort_if_all_failed(received: Sequence[Received], rnd: int) -> None:
    failed = [r.record for r in received if r.record.status is ClientStatus.FAILED]
    if failed and len(failed) == len(received):
        raise FedpeftError(f"round {rnd}: every sampled client failed, e.g. {failed[0].reason}.")


_Rule = Callable[[list[tuple[AdapterState, float]], AdapterState], AdapterState]


def _central_dp(
    ledger: PrivacyLedger | None,
    generator: torch.Generator,
    sampled: int,
    strategy: Strategy,
    info: dict[str, float],
) -> _Rule | None:
    """Central DP-FedAvg in place of the rule: ``θ + (Σ clip(Δ_c, S) + N(0, σ²S²)) / m``,
    m the clients sampled (``PrivacyLedger.aggregate``; its clip report lands in ``info``);
    None without central DP."""
    if ledger is None or ledger.mode != "central":
        return None

    def rule(updates: list[tuple[AdapterState, float]], current: AdapterState) -> AdapterState:
        states = [u for u, _ in updates]
        new, report = ledger.aggregate(current, states, sampled, generator, strategy.client_freeze)
        info.update(report)
        return new

    return rule


def _aggregate(
    strategy: Strategy,
    state: ServerState,
    plan: RoundPlan,
    accepted: Mapping[int, Received],
    num_clients: int,
    central: _Rule | None = None,
    normalise: bool = False,
    dilute: bool = False,
    keep_tail: bool = False,
    failed: dict[str, str] | None = None,
) -> ServerState:
    """Per group: the rule (or ``central`` DP-FedAvg) over its clients' (lifted) updates,
    then the server optimiser. With ``normalise`` (``allocation.normalise_work``) each update
    is first rescaled to FedNova's per-step average (unequal local steps); with ``dilute``
    (``allocation.partial_keys``: "all", or "auto" under the utility policy) a key some
    clients hold moves by their share of the group's weight; with ``keep_tail``
    (``allocation.rank_tail = "keep"``) a client's reply is padded past its rank with the
    group's own components instead of zeros (``lift``). A clustered rule regroups this
    round's clients by cluster instead."""
    updates = {c: r.update for c, r in accepted.items() if r.update is not None}
    if strategy.partition is not None and len(updates) >= 2:
        groups = {c: r.sent.instruction.group for c, r in accepted.items()}
        views = {c: r.sent.start for c, r in accepted.items()}
        adapters, clusters = aggregate_clusters(
            strategy, plan.adapters, updates, views, groups, state.clusters, num_clients
        )
        return state.evolve(adapters=adapters, clusters=clusters)
    adapters, optimizer = dict(plan.adapters), dict(state.optimizer)
    states = _normalised(updates, accepted) if normalise else _as_is(updates)
    by_group: dict[str, list[tuple[AdapterState, float]]] = {}
    for cid, (client_state, weight) in states.items():
        a = plan.assigned[cid]
        lifted = lift(client_state, adapters[a.group], a.alpha, keep_tail)
        by_group.setdefault(a.group, []).append((lifted, weight))
    for group, group_updates in sorted(by_group.items()):
        current = adapters[group]
        try:
            aggregated = (
                central(group_updates, current)
                if central is not None
                else aggregate_partial(group_updates, current, strategy.aggregate, dilute)
            )
        except ValueError as e:  # a rule's precondition; the round must not crash the run
            log.warning("aggregation of group %s failed (%s); unchanged", group, e)
            if failed is not None:
                failed[group] = str(e)
            continue
        _server_step_in_place(strategy, adapters, optimizer, group, current, aggregated)
    return state.evolve(adapters=adapters, optimizer=optimizer)


def _server_step_in_place(
    strategy: Strategy,
    adapters: dict[str, AdapterState],
    optimizer: dict[str, AdapterState],
    group: str,
    current: AdapterState,
    aggregated: AdapterState,
) -> None:
    """Sets the group's new global (and optimiser state) in ``adapters`` (``optimizer``):
    the aggregate itself without a server optimiser, else the optimiser's step towards it."""
    if strategy.server_optimizer is None:
        adapters[group] = aggregated
        return
    opt_state = optimizer.get(group, {})
    if not _fits(opt_state, current):
        opt_state = {}  # the envelope grew: its buffers start afresh
    adapters[group], optimizer[group] = strategy.server_optimizer(current, aggregated, opt_state)


def _aggregate_secure(
    strategy: Strategy,
    state: ServerState,
    plan: RoundPlan,
    summed: SecureSum,
    ledger: PrivacyLedger | None,
    generator: torch.Generator,
    sampled: int,
) -> ServerState:
    """The one group's global from the securely aggregated sum (``server/secure.py``), then
    the server optimiser; the summed example count joins the group's."""
    assert summed.total is not None
    sent = plan.sent[0]
    group = sent.instruction.group
    current = plan.adapters[group]
    view = secure_view(
        summed.total, summed.weight, sent.start, ledger, generator, sampled, strategy.client_freeze
    )
    adapters, optimizer = dict(plan.adapters), dict(state.optimizer)
    _server_step_in_place(strategy, adapters, optimizer, group, current, current | view)
    examples = dict(state.examples)
    if ledger is None or ledger.mode != "central":
        examples[group] = examples.get(group, 0) + round(summed.weight)
    return state.evolve(adapters=adapters, optimizer=optimizer, examples=examples)


def _as_is(updates: Mapping[int, ClientUpdate]) -> dict[int, tuple[AdapterState, float]]:
    return {cid: (u.state, float(u.num_examples)) for cid, u in updates.items()}


def _normalised(
    updates: Mapping[int, ClientUpdate], accepted: Mapping[int, Received]
) -> dict[int, tuple[AdapterState, float]]:
    """FedNova's rescaling of each group's updates (``aggregation.fednova``)."""
    out: dict[int, tuple[AdapterState, float]] = {}
    groups: dict[str, list[int]] = {}
    for cid in updates:
        groups.setdefault(accepted[cid].sent.instruction.group, []).append(cid)
    for members in groups.values():
        work = [
            (
                updates[c].state,
                accepted[c].sent.start,
                max(1.0, updates[c].metrics.get("steps", 1.0)),
                float(max(1, updates[c].num_examples)),
            )
            for c in members
        ]
        out.update(zip(members, normalise_work(work), strict=True))
    return out


def _fits(opt_state: AdapterState, state: AdapterState) -> bool:
    return all(
        key.split("/", 1)[-1] in state and value.shape == state[key.split("/", 1)[-1]].shape
        for key, value in opt_state.items()
    )


def evaluate_groups(
    model: GlobalModel, book: GroupBook, state: ServerState
) -> dict[str, dict[str, float]]:
    """Each group's global, evaluated centrally at its own configuration."""
    out: dict[str, dict[str, float]] = {}
    for group in sorted(state.adapters):
        adapter, method, options = book.eval_state(group, state.adapters[group])
        out[group] = model.evaluate(adapter, method, options)
    return out


def _baseline(
    model: GlobalModel, book: GroupBook, state: ServerState, plan: RoundPlan
) -> dict[str, float]:
    """Each trained group's accuracy before this round's update (for the gain R learns)."""
    last = dict(state.last_accuracy)
    for group in {a.group for a in plan.assigned.values()} - set(last):
        adapter, method, options = book.eval_state(group, plan.adapters[group])
        last[group] = model.evaluate(adapter, method, options).get("accuracy", 0.0)
    return last


def _observe(
    assigner: Assigner,
    book: GroupBook,
    state: ServerState,
    plan: RoundPlan,
    accepted: Mapping[int, Received],
    evals: dict[str, dict[str, float]],
    before: dict[str, float],
) -> ServerState:
    """Gains update R; the main group is the one that trained on the most examples."""
    examples = dict(state.examples)
    for cid, r in accepted.items():
        if r.update is not None:
            group = state.group_of(cid, r.sent.instruction.group)  # clusters regroup
            examples[group] = examples.get(group, 0) + r.update.num_examples
    changes: dict[str, object] = {"examples": examples}
    if assigner.enabled:
        for name, metrics in evals.items():
            trained = [
                (a.candidate, _examples(accepted[c]))
                for c, a in plan.assigned.items()
                if a.group == name and c in accepted and a.candidate is not None
            ]
            if trained and name in before:
                assigner.observe(trained, metrics["accuracy"] - before[name])
        assigner.observe_updates(_returned(plan, accepted))
        changes["gain"] = assigner.estimator
        changes["last_accuracy"] = {g: m["accuracy"] for g, m in evals.items()}
    alive = sorted(g for g in examples if g in state.adapters)
    if alive:
        changes["main"] = max(alive, key=lambda g: examples[g])
    return state.evolve(**changes)


def _returned(
    plan: RoundPlan, accepted: Mapping[int, Received]
) -> dict[int, tuple[Candidate, AdapterState]]:
    """Each accepted client's configuration and returned state."""
    out = {}
    for cid, r in accepted.items():
        a = plan.assigned.get(cid)
        if a is not None and a.candidate is not None and r.update is not None:
            out[cid] = (a.candidate, r.update.state)
    return out


def _examples(r: Received) -> int:
    return r.update.num_examples if r.update is not None else 0


def _sim_time(clients: list[ClientRecord], deadline: float) -> float | None:
    """The round's simulated duration: the slowest finished client, or the deadline."""
    times = [c.sim_time_s for c in clients if c.sim_time_s is not None]
    skipped = (ClientStatus.STRAGGLER, ClientStatus.OFFLINE)
    if not times and not any(c.status in skipped for c in clients):
        return None
    if any(c.status is ClientStatus.STRAGGLER for c in clients):
        return deadline
    finished = [
        c.sim_time_s for c in clients if c.status is ClientStatus.OK and c.sim_time_s is not None
    ]
    return max(finished, default=0.0)
