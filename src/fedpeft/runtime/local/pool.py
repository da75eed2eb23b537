"""The in-process runtime's client pool and server-side model, over ONE frozen base.

A client's adapter is loaded into the shared model before it trains and read out after, so
per-client memory is its adapter state only and memory stays flat as the number of clients
grows. Messages still go through the wire codec, so byte counts are the bytes a real
deployment would send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedpeft.allocation import (
    Workload,
    client_workload,
    federation_devices,
    ignores_limits,
    make_allocation_config,
)
from fedpeft.client import ClientData, ClientState, ClientStateStore, FitResult, handle_fit
from fedpeft.client.evaluate import handle_evaluate
from fedpeft.client.personal import PersonalKit
from fedpeft.client.secagg import SECAGG_KINDS, SecretStore, split_secrets
from fedpeft.data import DataProfile, ImageSplit, TokenizedSplit
from fedpeft.errors import ClientSkipped
from fedpeft.peft import parse_method_ref, set_adapter_state
from fedpeft.profiling import ResourceProfile
from fedpeft.runtime.local.devices import DeviceSim, thread_cap
from fedpeft.runtime.local.jobs import (
    WorkerJobs,
    eval_request,
    fit_request,
    fit_result,
    logits_from_bytes,
    personal_kit,
)
from fedpeft.runtime.local.threads import ThreadPlan
from fedpeft.runtime.local.workers import ForkedWorkers
from fedpeft.server.evaluate import (
    classification_metrics,
    eval_order,
    evaluate_model,
    in_split_order,
    split_shares,
)
from fedpeft.server.protocols import (
    BatchedPool,
    ClientPool,
    DurationFn,
    EvaluatingPool,
    FusingModel,
    GlobalModel,
    ProfiledPool,
    ProxyModel,
    Request,
    SimulatedPool,
)
from fedpeft.server.task import Task
from fedpeft.types import AdapterState, ClientStatus, TrainInstruction


class LocalClientPool:
    """Clients as (partition indices, shared model): bytes in, bytes out, one at a time in
    this process (``ParallelClientPool`` trains several at once).

    With ``simulation.devices = true`` each client trains within its device (declared, or
    sized to the model: ``[profiles] scale``): availability, memory, deadline and thread cap
    (see ``devices.py``) for the local steps its instruction names; a client that does not
    train raises ``ClientSkipped`` and ``sim_seconds`` reports the simulated time of those
    that did. A policy that ignores the limits (``unconstrained``) is not held to memory
    or the deadline.
    """

    def __init__(
        self,
        task: Task,
        devices: list[ResourceProfile] | None = None,
        states: ClientStateStore | None = None,
    ) -> None:
        self.task = task
        self.states = states or ClientStateStore()  # what each client keeps between rounds
        self.secrets = SecretStore()  # a secure-aggregation round's client secrets (memory only)
        cfg = task.cfg
        self.devices = devices or federation_devices(cfg, task.arch, task.data.profiles)
        self.simulate = cfg.simulation.devices
        alloc = make_allocation_config(cfg.allocation)
        limits = not (alloc.enabled and ignores_limits(alloc.policy))
        sim = cfg.simulation
        self.sim = DeviceSim(
            cfg.run.seed, alloc.deadline_s, sim.availability, sim.thread_cap, limits=limits
        )
        self._sim_seconds: dict[tuple[int, int], float] = {}
        self._kit: PersonalKit | None = None

    @property
    def kit(self) -> PersonalKit:
        """What personalisation builds once in this process (``client/personal.py``)."""
        if self._kit is None:
            self._kit = personal_kit(self.task)
        return self._kit

    def num_examples(self, client_id: int) -> int | None:
        return len(self.task.data.partitions[client_id])

    def resources(self, client_id: int) -> ResourceProfile | None:
        return self.devices[client_id]

    def data_profile(self, client_id: int) -> DataProfile | None:
        return self.task.data.profiles[client_id]

    def sim_seconds(self, rnd: int, client_id: int) -> float | None:
        return self._sim_seconds.get((rnd, client_id))

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        self.admit(instruction, len(payload))
        cores = self.devices[instruction.client_id].cores
        with thread_cap(cores if self.simulate and self.sim.thread_cap else None):
            reply = self.train(instruction, payload)
        self.settle(instruction, len(payload), len(reply))
        return reply

    def close(self) -> None:
        """Releases what the pool holds (nothing here; workers in ``ParallelClientPool``)."""

    def train(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        """The client's training itself, on its model and its data: the encoded reply."""
        task, cid = self.task, instruction.client_id
        model = task.model_for(instruction.method, instruction.options)
        data = ClientData(task.data.train, task.data.partitions[cid])
        return self.fit_on(model, payload, instruction, data)

    def fit_on(
        self, model: torch.nn.Module, payload: bytes, ins: TrainInstruction, data: ClientData
    ) -> bytes:
        """``handle_fit`` of ``model`` on ``data``, with the client's kept state loaded before
        and saved after."""
        kept = self._kept(ins)
        initial = self.task.initial if ins.compression_down else None
        result = handle_fit(model, payload, ins, data, self.task.device, kept, initial, self.kit)
        return self.keep(ins, result)

    def _kept(self, ins: TrainInstruction) -> ClientState:
        """What the client kept from its last round, and within a secure-aggregation round
        the secrets of its earlier stages."""
        kept = self.states.load(ins.client_id, ins.round, ins.run_id)
        return kept | self.secrets.load(ins) if ins.kind in SECAGG_KINDS else kept

    def keep(self, instruction: TrainInstruction, result: FitResult) -> bytes:
        """Saves what the client keeps now (if it changed), its secure-aggregation secrets
        apart (in memory, dropped after the last stage); its reply."""
        own, secrets = split_secrets(result.state or {})
        if instruction.kind in SECAGG_KINDS:
            self.secrets.save(instruction, secrets)
        if result.state is not None and (own or instruction.kind not in SECAGG_KINDS):
            self.states.save(instruction.client_id, instruction.round, own, instruction.run_id)
        return result.reply

    def evaluate_many(
        self, requests: Sequence[tuple[TrainInstruction, bytes]]
    ) -> list[bytes | Exception]:
        """Each client scores its models on its held-out share (``client/evaluate.py``)."""
        out: list[bytes | Exception] = []
        for ins, payload in requests:
            try:
                out.append(self.evaluate_on(ins.client_id, payload, ins))
            except Exception as e:  # noqa: BLE001 - one failing client must not stop the rest
                out.append(e)
        return out

    def evaluate_on(self, index: int, payload: bytes, ins: TrainInstruction) -> bytes:
        """``handle_evaluate`` on partition ``index`` with the client's kept state as of the
        end of round ``ins.round``; its personal model is exported into
        ``<states>/<client>/adapter/`` (the run's ``clients/<id>/adapter/`` in-process)."""
        task, cid = self.task, ins.client_id
        data = ClientData(task.data.train, task.data.partitions[index])
        tests = task.data.tests
        held = tests[index] if tests else np.zeros(0, dtype=np.int64)
        model = task.model_for(ins.method, ins.options)
        state = self.states.load(cid, ins.round + 1, ins.run_id)
        kept = self.states.client_folder(cid, ins.run_id)
        folder = kept / "adapter" if kept is not None else None
        result = handle_evaluate(
            model, payload, ins, data, ClientData(task.data.train, held), task.device, self.kit,
            state, folder,
        )  # fmt: skip
        if result.state is not None:
            self.states.save(cid, ins.round, result.state, ins.run_id)
        return result.reply

    def admit(self, instruction: TrainInstruction, down: int) -> None:
        """Raises ``ClientSkipped`` for a simulated device that does not train this round:
        offline, out of memory, or predicted past the deadline."""
        if not self.simulate:
            return
        task, cid = self.task, instruction.client_id
        profile = self.devices[cid]
        spec = parse_method_ref(instruction.method, instruction.options, task.ref).spec
        work = self._workload(instruction)
        if not self.sim.online(profile, instruction.round, cid):
            raise ClientSkipped(ClientStatus.OFFLINE, f"the {profile.tier} device is not available")
        self.sim.check_memory(profile, task.arch, spec, work)
        if task.cfg.server.mode == "sync":  # asynchronous servers have no round deadline
            up = max(down - spec.down_only_bytes(task.arch), 0)  # a reply as large as the view
            self.sim.check_deadline(self.sim.seconds(profile, task.arch, spec, work, down, up))

    def settle(self, instruction: TrainInstruction, down: int, up: int) -> None:
        """Records a simulated client's round trip once its reply is in."""
        if not self.simulate:
            return
        task, cid = self.task, instruction.client_id
        spec = parse_method_ref(instruction.method, instruction.options, task.ref).spec
        work = self._workload(instruction)
        seconds = self.sim.seconds(self.devices[cid], task.arch, spec, work, down, up)
        self._sim_seconds[(instruction.round, cid)] = seconds

    def _workload(self, instruction: TrainInstruction) -> Workload:
        """The local work the instruction names (an allocation may shorten the steps)."""
        return client_workload(
            self.task.data.profiles[instruction.client_id],
            instruction.batch_size,
            self.task.cfg.model.max_length,
            instruction.epochs,
            instruction.steps,
        )


class PartedFit:
    """``fit_part`` for the in-process batched pools (a ``PartedPool``): nothing in their
    ``fit_many`` depends on the whole round, so a part of it is just a shorter call."""

    def fit_many(self, requests: Sequence[Request]) -> list[bytes | Exception]:
        raise NotImplementedError

    def fit_part(self, requests: Sequence[Request]) -> list[bytes | Exception]:
        return self.fit_many(requests)


class ParallelClientPool(PartedFit, LocalClientPool):
    """``LocalClientPool`` that trains a round's clients ``workers`` at a time in forked
    workers over the shared base (``workers.py``): a ``BatchedPool``. Results do not
    depend on the number of workers; ``close`` ends them."""

    def __init__(
        self,
        task: Task,
        plan: ThreadPlan,
        devices: list[ResourceProfile] | None = None,
        states: ClientStateStore | None = None,
    ) -> None:
        super().__init__(task, devices, states)
        self.plan = plan
        self.workers = ForkedWorkers(plan.workers, WorkerJobs(task).handle, plan.worker_threads)

    def fit_many(self, requests: Sequence[Request]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = []
        admitted: list[int] = []
        for k, (ins, payload) in enumerate(requests):
            try:
                self.admit(ins, len(payload))
                admitted.append(k)
                out.append(b"")
            except Exception as e:  # noqa: BLE001 - skipped or failed, as ``fit`` raises
                out.append(e)
        costs = [self._cost(requests[k][0]) for k in admitted]
        jobs = [fit_request(*requests[k], self._kept(requests[k][0])) for k in admitted]
        for k, raw in zip(admitted, self.workers.run(jobs, costs), strict=True):
            ins, payload = requests[k]
            if isinstance(raw, Exception):
                out[k] = raw
                continue
            reply = self.keep(ins, fit_result(raw))
            self.settle(ins, len(payload), len(reply))
            out[k] = reply
        return out

    def close(self) -> None:
        self.workers.close()

    def _cost(self, ins: TrainInstruction) -> float:
        """Tokens the client will train on: the order in which workers take clients."""
        profile = self.task.data.profiles[ins.client_id]
        n = ins.steps * ins.batch_size if ins.steps else ins.epochs * profile.num_examples
        return float(n) * max(profile.mean_length, 1.0)


class LocalGlobalModel:
    """The same shared models, with a global adapter loaded, for central evaluation; with
    ``workers`` (a ``ParallelClientPool``'s, idle between rounds' training) a
    classifier's evaluation batches are shared out among them."""

    def __init__(self, task: Task, workers: ForkedWorkers | None = None) -> None:
        self.task = task
        self.workers = workers

    def template(self, method: str, options: str) -> AdapterState:
        return self.task.template(method, options)

    def proxy_batches(self, with_labels: bool = False) -> list[dict[str, torch.Tensor]]:
        """The server's held-out proxy examples as forward arguments (unlabelled by default)."""
        t = self.task
        size, proxy = t.eval_batch_size, t.data.proxy
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
        split = t.data.eval
        if (
            self.workers is not None
            and self.workers.size > 1
            and isinstance(split, TokenizedSplit | ImageSplit)  # class logits to share out
        ):
            return self._evaluate_shared(self.workers, state, method, options)
        model = t.model_for(method, options)
        set_adapter_state(model, state)
        return evaluate_model(model, split, t.eval_batch_size, t.device)

    def _evaluate_shared(
        self, workers: ForkedWorkers, state: AdapterState, method: str, options: str
    ) -> dict[str, float]:
        """The evaluation batches in contiguous shares, one per worker, each share's
        logits back as bytes; the same batches, so the same logits, as in this process."""
        split = self.task.data.eval
        batches = eval_order(split, self.task.eval_batch_size)
        shares = split_shares(batches, split.lengths, workers.size)
        requests = [eval_request(state, method, options, share) for share in shares]
        replies = workers.run(requests, [float(b - a) for a, b in shares])
        parts = []
        for (a, b), reply in zip(shares, replies, strict=True):
            if isinstance(reply, Exception):
                raise RuntimeError(f"evaluation in a worker failed: {reply}") from reply
            parts.append(logits_from_bytes(reply, sum(len(x) for x in batches[a:b])))
        logits = in_split_order(torch.cat(parts), batches)
        return classification_metrics(logits, split.labels)


def device_durations(task: Task) -> DurationFn:
    """The asynchronous clock's durations: each client's simulated round trip on its declared
    device (``devices.py``: the cost model's compute time at its FLOP/s plus the payloads
    over its bandwidth), whether or not ``simulation.devices`` also caps threads and drops."""
    cfg = task.cfg
    devices = federation_devices(cfg, task.arch, task.data.profiles)
    sim = DeviceSim(cfg.run.seed, make_allocation_config(cfg.allocation).deadline_s)
    c = cfg.client

    def seconds(cid: int, version: int, metrics: dict[str, float], down: int, up: int) -> float:
        work = client_workload(
            task.data.profiles[cid], c.batch_size, cfg.model.max_length, c.epochs, c.steps
        )
        return sim.seconds(devices[cid], task.arch, task.method, work, down, up)

    return seconds


def _conforms(
    pool: LocalClientPool, parallel: ParallelClientPool, model: LocalGlobalModel
) -> tuple[
    ClientPool,
    ProfiledPool,
    SimulatedPool,
    BatchedPool,
    EvaluatingPool,
    GlobalModel,
    ProxyModel,
    FusingModel,
]:
    """Never called: mypy checks here that this runtime offers every capability it claims."""
    return pool, pool, pool, parallel, pool, model, model, model
