"""Training a group of clients in one pass (``grouped.py``), and the pool that does it.

``fit_group`` runs each client's own batches (``local_batches``, the same as one client
alone), step by step for all active clients at once, and returns each client's reply as
``client.handle_fit`` would. ``GroupedClientPool`` cuts a round into groups of at most
``run.clients_per_pass`` clients with the same hyperparameters and configuration (similar
amounts of work together); configurations that cannot be grouped train one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psutil
import torch
import torch.nn.functional as F

from fedpeft.client import (
    META_CLIENT_ID,
    META_METRICS,
    META_NONCE,
    META_NUM_EXAMPLES,
    META_ROUND,
    ClientData,
    ClientStateStore,
    derive_seed,
    split_extras,
)
from fedpeft.client.handler import KIND_TRAIN
from fedpeft.compression import decode, encode
from fedpeft.data import Batch, ImageBatch, TokenizedSplit
from fedpeft.peft import parse_method_ref
from fedpeft.peft.share import apply_shared
from fedpeft.profiling import ResourceProfile
from fedpeft.runtime.local.grouped import GroupedLora, group_key, local_batches, stack_batches
from fedpeft.runtime.local.pool import LocalClientPool, PartedFit
from fedpeft.server.protocols import Request
from fedpeft.server.task import Task
from fedpeft.types import TrainInstruction


def fit_group(g: GroupedLora, requests: Sequence[Request], task: Task) -> list[bytes]:
    """Every request of one group trained together; their encoded replies, in order."""
    run = _GroupRun(g, requests, task)
    seed = derive_seed(run.first.seed, run.first.round, *(i.client_id for i, _ in requests))
    start = time.perf_counter()
    g.model.train()
    with torch.random.fork_rng(devices=[]):  # one dropout stream for the group, seeded
        torch.manual_seed(seed)
        while run.step():
            pass
    return run.replies(time.perf_counter() - start)


class _GroupRun:
    """One group's training: its clients' batch streams, optimiser and bookkeeping."""

    def __init__(self, g: GroupedLora, requests: Sequence[Request], task: Task) -> None:
        split = task.data.train
        if not isinstance(split, TokenizedSplit):
            raise ValueError("only text classifiers train in groups")
        self.g, self.requests, self.task, self.split = g, requests, task, split
        self.first = first = requests[0][0]
        trainable = {k for k in g.keys if not any(part in k for part in first.freeze)}
        g.load([decode(payload)[0] for _, payload in requests], trainable)
        self.params = [p for p in g.stacked.values() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in self.params] if first.proximal_mu > 0 else []
        self.opt = torch.optim.AdamW(self.params, lr=first.lr, weight_decay=first.weight_decay)
        self.data = [ClientData(split, task.data.partitions[i.client_id]) for i, _ in requests]
        self.batches = [local_batches(i, d) for (i, _), d in zip(requests, self.data, strict=True)]
        n = len(requests)
        self.finals: list[dict[str, torch.Tensor] | None] = [None] * n
        self.loss_sum, self.seen, self.steps = [0.0] * n, [0] * n, [0] * n
        self.meter = _Peak(task.device)

    def step(self) -> bool:
        """One optimiser step of every client that has a batch left; False when all are done."""
        step = {}
        for k, stream in enumerate(self.batches):
            if self.finals[k] is None and (b := next(stream, None)) is not None:
                step[k] = b
            elif self.finals[k] is None:
                self.finals[k] = self.g.state(k)  # done: read out before the others step on
        if not step:
            return False
        per = self._losses(step)
        loss = per.sum() + _proximal(self.params, self.anchor, self.first.proximal_mu, self.g)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for j, k in enumerate(sorted(step)):
            self.loss_sum[k] += float(per[j].detach()) * len(step[k])
            self.seen[k] += len(step[k])
            self.steps[k] += 1
        self.meter.sample()
        return True

    def _losses(self, step: dict[int, Batch | ImageBatch]) -> torch.Tensor:
        """Each active client's mean cross-entropy on its own batch, from one pass."""
        device, ks = self.task.device, sorted(step)
        rows = self.first.batch_size
        inputs, weight = stack_batches([_text(step[k]) for k in ks], rows, self.split.pad_id)
        inputs = {n: t.to(device) for n, t in inputs.items()}
        self.g.slot.active = torch.tensor(ks, device=device)
        mask = inputs["attention_mask"]
        logits = self.g.model(input_ids=inputs["input_ids"], attention_mask=mask).logits
        ce = F.cross_entropy(logits.float(), inputs["labels"], reduction="none")
        counts = torch.tensor([len(step[k]) for k in ks], device=device)
        return (ce * weight.to(device)).view(len(ks), -1).sum(1) / counts

    def replies(self, elapsed: float) -> list[bytes]:
        out = []
        for k, (ins, _) in enumerate(self.requests):
            metrics = {
                "loss": self.loss_sum[k] / max(self.seen[k], 1),
                "steps": float(self.steps[k]),
                "train_time_s": elapsed,  # the group's: its clients trained at the same time
                "peak_mem_bytes": float(self.meter.peak),
                "mem_rise_bytes": float(self.meter.peak - self.meter.start),
            }
            state = self.finals[k]
            assert state is not None, "a client's stream ended unread"
            out.append(encode(state, _meta(ins, len(self.data[k].indices), metrics)))
        return out


def _text(batch: Batch | ImageBatch) -> Batch:
    if not isinstance(batch, Batch):
        raise TypeError("only text batches train in groups")
    return batch


def _meta(ins: TrainInstruction, n: int, metrics: dict[str, float]) -> dict[str, object]:
    return {META_CLIENT_ID: ins.client_id, META_ROUND: ins.round, META_NONCE: ins.nonce,
            META_NUM_EXAMPLES: n, META_METRICS: metrics}  # fmt: skip


def _proximal(
    params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float, g: GroupedLora
) -> torch.Tensor:
    """FedProx's ``(μ/2)·‖θ_k − θ⁰_k‖²`` summed over the active clients."""
    active = g.slot.active
    total = torch.zeros((), device=active.device)
    if mu <= 0:
        return total
    for p, a in zip(params, anchor, strict=True):
        total = total + ((p[active] - a[active]) ** 2).sum()
    return 0.5 * mu * total


class _Peak:
    """Peak process RSS (CPU) or allocated memory (CUDA), sampled once per step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.process, self.peak = device, psutil.Process(), 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.sample()
        self.start = self.peak

    def sample(self) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = max(self.peak, self.process.memory_info().rss)


class GroupedClientPool(PartedFit, LocalClientPool):
    """A round's clients trained ``per_pass`` at a time in one pass (a ``BatchedPool``)."""

    def __init__(
        self,
        task: Task,
        per_pass: int,
        devices: list[ResourceProfile] | None = None,
        states: ClientStateStore | None = None,
    ) -> None:
        super().__init__(task, devices, states)
        self.per_pass = per_pass
        self._grouped: dict[tuple[str, str], GroupedLora | None] = {}

    def fit_many(self, requests: Sequence[Request]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = [b""] * len(requests)
        todo: dict[tuple[object, ...], list[int]] = {}
        for k, (ins, payload) in enumerate(requests):
            try:
                self.admit(ins, len(payload))
            except Exception as e:  # noqa: BLE001 - skipped or failed, as ``fit`` raises
                out[k] = e
                continue
            alone = not self._plain(ins, payload)  # a client half's extras or kept state
            todo.setdefault((group_key(ins), k if alone else -1), []).append(k)
        for members in todo.values():
            members.sort(key=lambda k: -len(self.task.data.partitions[requests[k][0].client_id]))
            for i in range(0, len(members), self.per_pass):
                chunk = members[i : i + self.per_pass]
                for k, reply in zip(
                    chunk, self._fit_chunk([requests[k] for k in chunk]), strict=True
                ):
                    if isinstance(reply, bytes):
                        self.settle(requests[k][0], len(requests[k][1]), len(reply))
                    out[k] = reply
        return out

    def _fit_chunk(self, chunk: Sequence[Request]) -> list[bytes | Exception]:
        ins = chunk[0][0]
        g = self.grouped(ins.method, ins.options) if len(chunk) > 1 else None
        if g is None:
            return [self._fit_one(i, p) for i, p in chunk]
        try:
            return list(fit_group(g, chunk, self.task))
        except Exception as e:  # noqa: BLE001 - the group's clients fail, the round goes on
            return [e] * len(chunk)

    def _plain(self, ins: TrainInstruction, payload: bytes) -> bool:
        """Whether the client needs nothing but its adapter and a plain reply (no extras, no
        kept state, no compressed message either way) and asks to be trained (not, e.g., for
        the round-0 feature statistics)."""
        if ins.kind != KIND_TRAIN or ins.compression or ins.compression_down or ins.objective:
            return False
        try:
            extras = split_extras(decode(payload)[0])[1]
        except Exception:  # noqa: BLE001 - its own training reports the bad payload
            return False
        return not extras and not self.states.load(ins.client_id, ins.round, ins.run_id)

    def _fit_one(self, ins: TrainInstruction, payload: bytes) -> bytes | Exception:
        try:
            return self.train(ins, payload)
        except Exception as e:  # noqa: BLE001
            return e

    def grouped(self, method: str, options: str) -> GroupedLora | None:
        """The grouped replica of a configuration (built once), or None if it cannot be."""
        key = (method, options)
        if key not in self._grouped:
            t = self.task
            spec = parse_method_ref(method, options, t.ref).spec
            model = apply_shared(t.base, spec, t.arch, t.cfg.run.seed).to(t.device)
            ok = t.kind == "classify" and GroupedLora.supports(model)
            self._grouped[key] = GroupedLora(t.prepare(model, spec)) if ok else None
        return self._grouped[key]
