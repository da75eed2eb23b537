"""The in-process runtime's client pool and server-side model, over ONE frozen base.

A client's adapter is loaded into the shared model before it trains and read out after, so
per-client memory is its adapter state only and memory stays flat as the number of clients
grows. Messages still go through the wire codec, so byte counts are the bytes a real
deployment would send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fedpeft.allocation import client_workload, make_allocation_config
from fedpeft.client import ClientData, ClientStateStore, handle_fit
from fedpeft.data import DataProfile
from fedpeft.errors import ClientSkipped
from fedpeft.peft import get_adapter_state, parse_method_ref, set_adapter_state
from fedpeft.profiling import ResourceProfile, declared_devices
from fedpeft.runtime.local.devices import DeviceSim, thread_cap
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.protocols import (
    ClientPool,
    DurationFn,
    FusingModel,
    GlobalModel,
    ProfiledPool,
    ProxyModel,
    SimulatedPool,
)
from fedpeft.server.task import Task
from fedpeft.types import AdapterState, ClientStatus, TrainInstruction


class LocalClientPool:
    """Clients as (partition indices, shared model): bytes in, bytes out.

    With ``simulation.devices = true`` each client trains within its declared device:
    availability, memory, deadline and thread cap (see ``devices.py``); a client that does
    not train raises ``ClientSkipped`` and ``sim_seconds`` reports the simulated time of
    those that did.
    """

    def __init__(
        self,
        task: Task,
        devices: list[ResourceProfile] | None = None,
        states: ClientStateStore | None = None,
    ) -> None:
        self.task = task
        self.states = states or ClientStateStore()  # what each client keeps between rounds
        cfg, p = task.cfg, task.cfg.profiles
        self.devices = devices or declared_devices(
            cfg.data.num_clients, p.mix, cfg.run.seed, p.file
        )
        self.simulate = cfg.simulation.devices
        deadline = make_allocation_config(cfg.allocation).deadline_s
        sim = cfg.simulation
        self.sim = DeviceSim(cfg.run.seed, deadline, sim.availability, sim.thread_cap)
        self._sim_seconds: dict[tuple[int, int], float] = {}

    def num_examples(self, client_id: int) -> int | None:
        return len(self.task.data.partitions[client_id])

    def resources(self, client_id: int) -> ResourceProfile | None:
        return self.devices[client_id]

    def data_profile(self, client_id: int) -> DataProfile | None:
        return self.task.data.profiles[client_id]

    def sim_seconds(self, rnd: int, client_id: int) -> float | None:
        return self._sim_seconds.get((rnd, client_id))

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        task, cid = self.task, instruction.client_id
        model = task.model_for(instruction.method, instruction.options)
        data = ClientData(task.data.train, task.data.partitions[cid])
        if not self.simulate:
            return self.fit_on(model, payload, instruction, data)
        profile = self.devices[cid]
        spec = parse_method_ref(instruction.method, instruction.options, task.ref).spec
        c = task.cfg.client
        work = client_workload(
            task.data.profiles[cid],
            instruction.batch_size,
            task.cfg.model.max_length,
            c.epochs,
            c.steps,
        )
        if not self.sim.online(profile, instruction.round, cid):
            raise ClientSkipped(ClientStatus.OFFLINE, f"the {profile.tier} device is not available")
        self.sim.check_memory(profile, task.arch, spec, work)
        if task.cfg.server.mode == "sync":  # asynchronous servers have no round deadline
            self.sim.check_deadline(
                self.sim.seconds(profile, task.arch, spec, work, len(payload), len(payload))
            )
        with thread_cap(profile.cores if self.sim.thread_cap else None):
            reply = self.fit_on(model, payload, instruction, data)
        seconds = self.sim.seconds(profile, task.arch, spec, work, len(payload), len(reply))
        self._sim_seconds[(instruction.round, cid)] = seconds
        return reply

    def fit_on(
        self, model: torch.nn.Module, payload: bytes, ins: TrainInstruction, data: ClientData
    ) -> bytes:
        """``handle_fit`` of ``model`` on ``data``, with the client's kept state loaded before
        and saved after."""
        state = self.states.load(ins.client_id, ins.round, ins.run_id)
        result = handle_fit(model, payload, ins, data, self.task.device, state)
        if result.state is not None:
            self.states.save(ins.client_id, ins.round, result.state, ins.run_id)
        return result.reply


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
        size, proxy = t.cfg.eval.batch_size, t.data.proxy
        chunks = [proxy[i : i + size] for i in range(0, len(proxy), size)]
        return [
            {
                k: v.to(t.device)
                for k, v in t.data.train.collate(c).model_inputs(with_labels).items()
            }
            for c in chunks
        ]

    def fuse(
        self,
        fuse: Callable[..., dict[str, AdapterState]],
        states: Mapping[str, tuple[AdapterState, str, str]],
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
        return evaluate_model(model, t.data.eval, t.cfg.eval.batch_size, t.device)


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
            task.data.profiles[cid], c.batch_size, cfg.model.max_length, c.epochs, c.steps
        )
        return sim.seconds(devices[cid], task.arch, task.method, work, down, up)

    return seconds


def _conforms(
    pool: LocalClientPool, model: LocalGlobalModel
) -> tuple[ClientPool, ProfiledPool, SimulatedPool, GlobalModel, ProxyModel, FusingModel]:
    """Never called: mypy checks here that this runtime offers every capability it claims."""
    return pool, pool, pool, model, model, model
