"""``run_local``: a federation in this process (the embedded default), or over another
runtime's client pool (Flower's ServerApp passes its own), with the run folder as
DESIGN.md describes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.client import ClientStateStore
from fedpeft.config import (
    ExperimentConfig,
    build_config,
    config_fingerprint,
    config_to_toml,
    read_toml,
)
from fedpeft.config.loading import accepted_fingerprints
from fedpeft.data import checks
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state, parse_method_ref, parse_spec, save_adapter
from fedpeft.runtime.local.group_fit import GroupedClientPool
from fedpeft.runtime.local.pool import (
    LocalClientPool,
    LocalGlobalModel,
    ParallelClientPool,
    device_durations,
)
from fedpeft.runtime.local.threads import apply_plan, plan_threads
from fedpeft.server import (
    DEFAULT_GROUP,
    Federation,
    Observer,
    RunStore,
    ServerState,
    run_async,
    run_rounds,
)
from fedpeft.server.classes import write_class_report
from fedpeft.server.config_checks import check_names
from fedpeft.server.export import export_adapter
from fedpeft.server.groups import GroupBook
from fedpeft.server.head_init import HEAD_INIT, init_head
from fedpeft.server.lr_auto import LR_SEARCH, resolved_lr
from fedpeft.server.personal import personal_summary, read_personal
from fedpeft.server.protocols import ClientPool
from fedpeft.server.store import (
    CLIENT_STATES,
    CONFIG,
    PARTITIONS,
    SUMMARY,
    check_rounds_left,
    write_atomic,
)
from fedpeft.server.summary import build_summary
from fedpeft.server.task import Task, build_task, resolved, train_questions
from fedpeft.server.validate import RejectedUpdate, check_finite, check_tensors
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.runtime.local")

__all__ = ["LocalClientPool", "LocalGlobalModel", "RunResult", "client_pool", "run_local"]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    state: AdapterState  # the main group's global adapter
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]


def run_local(
    cfg: ExperimentConfig,
    *,
    resume: Path | None = None,
    observer: Observer | None = None,
    pool: Callable[[Task], ClientPool] | None = None,
) -> RunResult:
    """Runs (or resumes) a federation and writes the run folder; clients are in this
    process unless ``pool`` builds another runtime's pool (e.g. Flower's) from the task."""
    start = time.perf_counter()
    checks.forget_said()  # a run says its data's warnings, whatever ran before it here
    stored = _stored_config(resume) if resume else None  # before a moved file's new place
    fingerprints = accepted_fingerprints(resolved(cfg, check_names(cfg)), stored)
    store = RunStore.open_existing(resume, fingerprints) if resume else None
    saved = store.load_checkpoint() if store else None  # a damaged run fails before any work
    if saved is not None:
        check_rounds_left(saved.round, cfg.run.rounds)
    with status("loading data and model"):
        task = build_task(cfg)
    with status("choosing the learning rate"):
        cfg, lr_search = resolved_lr(task)  # client.lr = "auto": a range test, once
        task.cfg = cfg
    state = _initial_state(task, saved, store)
    resolved_toml = config_to_toml(resolved(cfg, task.method))  # every default written out
    if store is None:
        fingerprint = config_fingerprint(resolved(cfg, task.method))  # with the chosen lr
        store = RunStore.create(cfg.run.output_dir, cfg.run.name, resolved_toml, fingerprint)
        store.write_json(PARTITIONS, _partitions_json(task))
        if lr_search is not None:
            store.write_json(LR_SEARCH, lr_search.to_json())
    else:
        store.truncate_logs(state.round)
        write_atomic(store.root / CONFIG, resolved_toml.encode())
    states = ClientStateStore(store.root / CLIENT_STATES)  # clients' own: never on the wire
    clients = pool(task) if pool else client_pool(task, states=states)
    workers = clients.workers if isinstance(clients, ParallelClientPool) else None
    observer = observer or Observer()
    observer.on_run_start(store.root)
    fed = Federation(
        cfg,
        clients,
        LocalGlobalModel(task, workers),
        store,
        task.arch,
        observer,
        device_durations(task),
        task.initial,
    )
    if saved is None:
        state = _round_zero(fed, state)
    try:
        loop = run_async(fed, state) if cfg.server.mode == "async" else run_rounds(fed, state)
    finally:
        if isinstance(clients, LocalClientPool):
            clients.close()  # forked workers end with the run
    main = loop.state.adapter if loop.state.adapters else {}
    _export(task, loop.state, store)
    write_class_report(task, loop.state, store)
    rounds = store.read_rounds()
    summary = build_summary(
        rounds,
        task.full_model_bytes,
        main,
        time.perf_counter() - start,
        {
            "run_dir": str(store.root),
            "model": task.data.spec.name,
            "dataset": task.data.dataset.name,
            "num_clients": cfg.data.num_clients,
            "peft": {"method": cfg.peft.method, **task.method.model_dump(mode="json")},
            "resumed_from_round": saved.round if saved is not None else None,
            **_privacy_summary(loop.state, rounds, loop.stopped),
            "personal": personal_summary(read_personal(store.root)),
        },
    )
    store.write_json(SUMMARY, summary)
    return RunResult(store.root, main, rounds, summary)


def _stored_config(run_dir: Path) -> ExperimentConfig | None:
    """The resumed run's own ``config.toml``, resolved as its checkpoints were fingerprinted
    (None where it cannot be read: the resume then fails on it with its own sentence)."""
    try:
        stored = build_config(read_toml(run_dir / CONFIG), source=str(run_dir / CONFIG))
        return resolved(stored, parse_spec(stored.peft.method, stored.peft.options))
    except (FedpeftError, OSError, ValueError):
        return None


def client_pool(task: Task, states: ClientStateStore | None = None) -> LocalClientPool:
    """The in-process pool the thread plan asks for (logged): clients trained several per
    pass (an accelerator), in forked workers (CPU cores), or one at a time."""
    plan = plan_threads(task.cfg, task.device)
    apply_plan(plan)
    if plan.clients_per_pass > 1:
        return GroupedClientPool(task, plan.clients_per_pass, states=states)
    if plan.workers > 1:
        return ParallelClientPool(task, plan, states=states)
    return LocalClientPool(task, states=states)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner on a terminal while ``message`` is under way (silent otherwise)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def _export(task: Task, state: ServerState, store: RunStore) -> None:
    """The main group's adapter into ``adapter/``; in a heterogeneous run every group's too,
    as it was evaluated, into ``adapters/<group>/``."""
    if not state.adapters:
        log.warning("no group was ever trained; nothing to export")
        return
    if set(state.adapters) == {DEFAULT_GROUP}:
        spec, method = task.method, task.cfg.peft.method
        export_adapter(task.model, state.adapter, task.data.spec, method, spec, store)
        return
    book = GroupBook(LocalGlobalModel(task), state.members)
    for group, envelope in sorted(state.adapters.items()):
        adapter, method, options = book.eval_state(group, envelope)
        model = task.model_for(method, options)  # "" (e.g. a cluster's): the [peft] method
        ref = parse_method_ref(method, options, task.ref)
        method, spec = ref.method, ref.spec
        folder = store.root / "adapters" / group
        save_adapter(model, adapter, folder, task.data.spec.hub_id, method, spec)
        if group == state.main:
            export_adapter(model, adapter, task.data.spec, method, spec, store)


def _round_zero(fed: Federation, state: ServerState) -> ServerState:
    """Round 0 of a fresh run: the head from the clients' class feature statistics
    (``server.head_init``, through the pool like any instruction), then the first
    checkpoint, so a run killed in its first round resumes from the same start."""
    state, head = init_head(fed.cfg, fed.pool, fed.model, state, fed.store.root.name, fed.arch)
    if head is not None:
        fed.store.write_json(HEAD_INIT, head.to_json())
    fed.store.save_checkpoint(state)
    return state


def _initial_state(task: Task, saved: ServerState | None, store: RunStore | None) -> ServerState:
    """A fresh adapter (round 0), or the checkpoint's, checked against the model."""
    fresh = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}  # server state: CPU
    if saved is None:
        if task.cfg.allocation.enabled:
            return ServerState({})  # groups are created as clients are assigned to them
        return ServerState({DEFAULT_GROUP: fresh})
    try:
        if DEFAULT_GROUP in saved.adapters:
            check_tensors(saved.adapters[DEFAULT_GROUP], fresh)
        for group, state in saved.adapters.items():
            check_finite(state, group)
    except RejectedUpdate as e:
        raise FedpeftError(
            f"run folder {store.root if store else ''} is incomplete or corrupted: its "
            f"checkpoint does not fit the configured model ({e}); nothing was resumed."
        ) from None
    if saved.round >= task.cfg.run.rounds:
        log.info("run already completed %d of %d rounds", saved.round, task.cfg.run.rounds)
    return saved


def _privacy_summary(
    state: ServerState, rounds: list[dict[str, Any]], stopped: str
) -> dict[str, Any]:
    """``privacy`` in summary.json: the mode, σ, S, δ and ε spent (the last round's)."""
    ledger = state.privacy
    if ledger is None:
        return {}
    spent: dict[str, Any] = next((r["privacy"] for r in reversed(rounds) if r.get("privacy")), {})
    return {
        "privacy": {
            "mode": ledger.mode,
            "noise_multiplier": ledger.noise_multiplier,
            "clip_norm": ledger.clip_norm,
            "delta": ledger.delta,
            "accountant": ledger.mechanism,
            "target_epsilon": ledger.target_epsilon,
            "epsilon": spent.get("epsilon", 0.0),
            "stopped": stopped or None,
        }
    }


def _partitions_json(task: Task) -> dict[str, object]:
    d = task.data
    return {
        "dataset": d.dataset.name,
        "source": d.dataset.source,
        "label_names": d.dataset.label_names,
        "partition": task.cfg.data.partition,
        "clients": {str(i): p.to_json() for i, p in enumerate(d.profiles)},
        **({} if (questions := train_questions(d)) is None else {"questions": questions}),
    }
