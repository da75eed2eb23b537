"""In-process simulation: ONE frozen base model shared by every simulated client.

A client's adapter is loaded into the shared model before it trains and read out
after, so per-client memory is its adapter state only and memory stays flat as the
number of clients grows. Messages still go through the wire codec, so byte counts are
the bytes a real deployment would send.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.allocation import client_workload, make_allocation_config
from fedpeft.client import ClientData, handle_fit
from fedpeft.config import ExperimentConfig, config_to_toml
from fedpeft.data import DataProfile
from fedpeft.errors import ClientSkipped, FedpeftError
from fedpeft.peft import get_adapter_state, parse_spec, save_adapter, set_adapter_state
from fedpeft.profiling import ResourceProfile, declared_devices
from fedpeft.runtime.local.devices import DeviceSim, thread_cap
from fedpeft.server import LoopResult, Observer, RunStore, ServerState, run_rounds
from fedpeft.server.assign import DEFAULT_GROUP
from fedpeft.server.async_loop import DurationFn, run_async
from fedpeft.server.collect import ClientPool
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.export import export_adapter
from fedpeft.server.groups import GroupBook
from fedpeft.server.head_init import HEAD_INIT, init_head
from fedpeft.server.lr_auto import LR_SEARCH, resolved_lr
from fedpeft.server.store import CONFIG, PARTITIONS, SUMMARY, write_atomic
from fedpeft.server.summary import build_summary
from fedpeft.server.task import Task, build_task, resolved
from fedpeft.server.validate import RejectedUpdate, check_finite, check_tensors
from fedpeft.types import AdapterState, TrainInstruction

log = logging.getLogger("fedpeft.runtime.local")


class LocalClientPool:
    """Clients as (partition indices, shared model): bytes in, bytes out.

    With ``devices`` (``simulation.devices = true``) each client trains within its declared
    device: availability, memory, deadline and thread cap (see ``devices.py``); a client
    that does not train raises ``ClientSkipped`` and ``sim_seconds`` reports the simulated
    time of those that did.
    """

    def __init__(self, task: Task, devices: list[ResourceProfile] | None = None) -> None:
        self.task = task
        p = task.cfg.profiles
        self.devices = devices or declared_devices(
            task.cfg.data.num_clients, p.mix, task.cfg.run.seed, p.file
        )
        self.simulate = task.cfg.simulation.devices
        cfg = task.cfg
        deadline = make_allocation_config(cfg.allocation).deadline_s
        sim = cfg.simulation
        self.sim = DeviceSim(cfg.run.seed, deadline, sim.availability, sim.thread_cap)
        self._sim_seconds: dict[tuple[int, int], float] = {}

    def num_examples(self, client_id: int) -> int | None:
        return len(self.task.partitions[client_id])

    def resources(self, client_id: int) -> ResourceProfile | None:
        return self.devices[client_id]

    def data_profile(self, client_id: int) -> DataProfile:
        return self.task.profiles[client_id]

    def sim_seconds(self, rnd: int, client_id: int) -> float | None:
        return self._sim_seconds.get((rnd, client_id))

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        task, cid = self.task, instruction.client_id
        model = task.model_for(instruction.method, instruction.options)
        data = ClientData(task.train, task.partitions[cid])
        profile = self.devices[cid]
        if not self.simulate:
            return handle_fit(model, payload, instruction, data, task.device)
        spec = parse_spec(
            instruction.method or task.cfg.peft.method, json.loads(instruction.options)
        )
        c = task.cfg.client
        work = client_workload(
            task.profiles[cid], instruction.batch_size, task.cfg.model.max_length, c.epochs, c.steps
        )
        if not self.sim.online(profile, instruction.round, cid):
            raise ClientSkipped("offline", f"the {profile.tier} device is not available")
        self.sim.check_memory(profile, task.arch, spec, work)
        if task.cfg.server.mode == "sync":  # asynchronous servers have no round deadline
            self.sim.check_deadline(
                self.sim.seconds(profile, task.arch, spec, work, len(payload), len(payload))
            )
        with thread_cap(profile.cores if self.sim.thread_cap else None):
            reply = handle_fit(model, payload, instruction, data, task.device)
        seconds = self.sim.seconds(profile, task.arch, spec, work, len(payload), len(reply))
        self._sim_seconds[(instruction.round, cid)] = seconds
        return reply


class LocalGlobalModel:
    """The same shared models, with a global adapter loaded, for central evaluation."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def template(self, method: str, options: str) -> AdapterState:
        """The freshly initialised adapter of a configuration (its keys, shapes, init)."""
        return {
            k: v.cpu() for k, v in get_adapter_state(self.task.model_for(method, options)).items()
        }

    def proxy_batches(self, with_labels: bool = False) -> list[dict[str, torch.Tensor]]:
        """The server's held-out proxy examples as forward arguments (unlabelled by default)."""
        t = self.task
        size = t.cfg.eval.batch_size
        chunks = [t.proxy[i : i + size] for i in range(0, len(t.proxy), size)]
        return [
            {k: v.to(t.device) for k, v in t.train.collate(c).model_inputs(with_labels).items()}
            for c in chunks
        ]

    def fuse(
        self, fuse: Any, states: dict[str, tuple[AdapterState, str, str]]
    ) -> dict[str, AdapterState]:
        """``fuse`` (e.g. distillation) over every group's model with its state loaded."""
        models = {}
        for group, (state, method, options) in states.items():
            models[group] = self.task.model_for(method, options)
            set_adapter_state(models[group], state)
        return dict(fuse(models, self.proxy_batches()))

    def proxy_loss(self, state: AdapterState, method: str = "", options: str = "{}") -> float:
        """Mean cross-entropy of ``state`` on the proxy set (what layer-wise weights use)."""
        model = self.task.model_for(method, options)
        set_adapter_state(model, state)
        model.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for batch in self.proxy_batches(with_labels=True):
                out = model(**batch)
                total += float(out.loss) * len(batch["labels"])
                n += len(batch["labels"])
        return total / max(n, 1)

    def evaluate(
        self, state: AdapterState, method: str = "", options: str = "{}"
    ) -> dict[str, float]:
        t = self.task
        model = t.model_for(method, options)
        set_adapter_state(model, state)
        return evaluate_model(model, t.eval, t.cfg.eval.batch_size, t.device)


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
    with status("choosing the learning rate"):
        cfg, lr_search = resolved_lr(task)  # client.lr = "auto": a range test, once
        task.cfg = cfg
    state, first = _initial_state(task, store, checkpoint)
    if store is None:
        resolved_toml = config_to_toml(resolved(cfg, task.method))  # every default written out
        store = RunStore.create(cfg.run.output_dir, cfg.run.name, resolved_toml)
        store.write_json(PARTITIONS, _partitions_json(task))
        if lr_search is not None:
            store.write_json(LR_SEARCH, lr_search.to_json())
    else:
        store.truncate_logs(first - 1)
        write_atomic(store.root / CONFIG, config_to_toml(resolved(cfg, task.method)).encode())
    clients, model = (pool or LocalClientPool)(task), LocalGlobalModel(task)
    if first == 1:  # round 0: the head from the clients' feature statistics
        state, head = init_head(cfg, clients, model, state)
        if head is not None:
            store.write_json(HEAD_INIT, head.to_json())
    if cfg.server.mode == "async":
        durations = device_durations(task)
        loop = run_async(cfg, clients, model, store, state, durations, observer, first)
    else:
        loop = run_rounds(cfg, clients, model, store, state, first, observer, task.arch)
    _export(task, loop, store)
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


def device_durations(task: Task) -> DurationFn:
    """The asynchronous clock's durations: each client's simulated round trip on its declared
    device (``devices.py``: the cost model's compute time at its FLOP/s plus the payloads
    over its bandwidth), whether or not ``simulation.devices`` also caps threads and drops."""
    cfg, p = task.cfg, task.cfg.profiles
    devices = declared_devices(cfg.data.num_clients, p.mix, cfg.run.seed, p.file)
    sim = DeviceSim(cfg.run.seed, make_allocation_config(cfg.allocation).deadline_s)
    c = cfg.client

    def seconds(cid: int, version: int, metrics: dict[str, float], down: int, up: int) -> float:
        work = client_workload(
            task.profiles[cid], c.batch_size, cfg.model.max_length, c.epochs, c.steps
        )
        return sim.seconds(devices[cid], task.arch, task.method, work, down, up)

    return seconds


def _export(task: Task, loop: LoopResult, store: RunStore) -> None:
    """The main group's adapter into ``adapter/``; in a heterogeneous run every group's too,
    as it was evaluated, into ``adapters/<group>/``."""
    server = loop.server
    if server is None or set(server.adapters) == {DEFAULT_GROUP}:
        export_adapter(task.model, loop.state, task.spec, task.cfg.peft.method, task.method, store)
        return
    book = GroupBook(LocalGlobalModel(task))
    book.load_json(server.extra.get("members"))
    for group, envelope in sorted(server.adapters.items()):
        state, method, options = book.eval_state(group, envelope)
        model = task.model_for(method, options)  # "" (e.g. a cluster's): the [peft] method
        if method:
            spec = parse_spec(method, json.loads(options))
        else:
            method, spec = task.cfg.peft.method, task.method
        folder = store.root / "adapters" / group
        save_adapter(model, state, folder, task.spec.hub_id, method, spec)
        if group == server.main:
            export_adapter(model, state, task.spec, method, spec, store)


def _initial_state(
    task: Task,
    store: RunStore | None,
    checkpoint: tuple[int, dict[str, AdapterState], dict[str, AdapterState], dict[str, Any]] | None,
) -> tuple[ServerState, int]:
    """A fresh adapter (round 1), or the checkpoint's (the round after it)."""
    fresh = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}  # server state: CPU
    if store is None or checkpoint is None:
        if task.cfg.allocation.get("enabled"):
            return ServerState({}), 1  # groups are created as clients are assigned to them
        return ServerState({DEFAULT_GROUP: fresh}), 1
    rnd, adapters, optimizer, extra = checkpoint
    try:
        if DEFAULT_GROUP in adapters:
            check_tensors(adapters[DEFAULT_GROUP], fresh)
        for group, state in adapters.items():
            check_finite(state, group)
    except RejectedUpdate as e:
        raise FedpeftError(
            f"run folder {store.root} is incomplete or corrupted: its checkpoint does not fit "
            f"the configured model ({e}); nothing was resumed."
        ) from None
    if rnd >= task.cfg.run.rounds:
        log.info("run already completed %d of %d rounds", rnd, task.cfg.run.rounds)
    return ServerState(adapters, optimizer, extra), rnd + 1


def _partitions_json(task: Task) -> dict[str, object]:
    return {
        "dataset": task.dataset.name,
        "source": task.dataset.source,
        "label_names": task.dataset.label_names,
        "partition": task.cfg.data.partition,
        "clients": {str(i): p.to_json() for i, p in enumerate(task.profiles)},
    }
