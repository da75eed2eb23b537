"""In-process simulation: ONE frozen base model shared by every simulated client.

A client's adapter is loaded into the shared model before it trains and read out
after, so per-client memory is its adapter state only and memory stays flat as the
number of clients grows. Messages still go through the wire codec, so byte counts are
the bytes a real deployment would send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.client import ClientData, handle_fit
from fedpeft.config import ExperimentConfig, config_to_toml
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.server import LoopResult, Observer, RunStore, ServerState, run_rounds
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.export import export_adapter
from fedpeft.server.loop import ClientPool
from fedpeft.server.store import CONFIG, PARTITIONS, SUMMARY, write_atomic
from fedpeft.server.summary import build_summary
from fedpeft.server.task import Task, build_task, resolved
from fedpeft.server.validate import RejectedUpdate, check_tensors
from fedpeft.types import AdapterState, TrainInstruction

log = logging.getLogger("fedpeft.runtime.local")


class LocalClientPool:
    """Clients as (partition indices, shared model): bytes in, bytes out."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def num_examples(self, client_id: int) -> int | None:
        return len(self.task.partitions[client_id])

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        data = ClientData(self.task.train, self.task.partitions[instruction.client_id])
        return handle_fit(self.task.model, payload, instruction, data, self.task.device)


class LocalGlobalModel:
    """The same shared model, with the global adapter loaded, for central evaluation."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        set_adapter_state(self.task.model, state)
        t = self.task
        return evaluate_model(t.model, t.eval, t.cfg.eval.batch_size, t.device)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    state: AdapterState
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
    store = RunStore.open_existing(resume) if resume else None
    checkpoint = store.load_checkpoint() if store else None  # a damaged run fails before any work
    with status("loading data and model"):
        task = build_task(cfg)
    state, first = _initial_state(task, store, checkpoint)
    if store is None:
        resolved_toml = config_to_toml(resolved(cfg, task.method))  # every default written out
        store = RunStore.create(cfg.run.output_dir, cfg.run.name, resolved_toml)
        store.write_json(PARTITIONS, _partitions_json(task))
    else:
        store.truncate_logs(first - 1)
        write_atomic(store.root / CONFIG, config_to_toml(resolved(cfg, task.method)).encode())
    loop: LoopResult = run_rounds(
        cfg, (pool or LocalClientPool)(task), LocalGlobalModel(task), store, state, first, observer
    )
    export_adapter(task.model, loop.state, task.spec, cfg.peft.method, task.method, store)
    rounds = store.read_rounds()
    summary = build_summary(
        rounds,
        task.full_model_bytes,
        loop.state,
        time.perf_counter() - start,
        {
            "run_dir": str(store.root),
            "model": task.spec.name,
            "dataset": task.dataset.name,
            "num_clients": cfg.data.num_clients,
            "peft": {"method": cfg.peft.method, **task.method.model_dump(mode="json")},
            "resumed_from_round": first - 1 if resume else None,
        },
    )
    store.write_json(SUMMARY, summary)
    return RunResult(store.root, loop.state, rounds, summary)


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


def _initial_state(
    task: Task, store: RunStore | None, checkpoint: tuple[int, AdapterState, AdapterState] | None
) -> tuple[ServerState, int]:
    """A fresh adapter (round 1), or the checkpoint's (the round after it)."""
    fresh = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}  # server state: CPU
    if store is None or checkpoint is None:
        return ServerState(fresh), 1
    rnd, state, optimizer = checkpoint
    try:
        check_tensors(state, fresh)
    except RejectedUpdate as e:
        raise FedpeftError(
            f"run folder {store.root} is incomplete or corrupted: its checkpoint does not fit "
            f"the configured model ({e}); nothing was resumed."
        ) from None
    if rnd >= task.cfg.run.rounds:
        log.info("run already completed %d of %d rounds", rnd, task.cfg.run.rounds)
    return ServerState(state, optimizer), rnd + 1


def _partitions_json(task: Task) -> dict[str, object]:
    return {
        "dataset": task.dataset.name,
        "source": task.dataset.source,
        "label_names": task.dataset.label_names,
        "partition": task.cfg.data.partition,
        "clients": {str(i): p.to_json() for i, p in enumerate(task.profiles)},
    }
