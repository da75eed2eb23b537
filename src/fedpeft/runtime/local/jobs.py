"""What a forked worker runs (``workers.py``), by the request's ``kind``:

- ``fit``: one client's round: its instruction (JSON), the encoded state it starts from and
  the state it kept from its last round in; its encoded reply and what it keeps now out
  (``client.handle_fit``, as in the server process; the server process stores kept states,
  so any worker can train any client);
- ``eval``: a contiguous share ``[start, stop)`` of central evaluation's length-sorted
  batches (``server.evaluate.eval_order``) for an encoded global state, its logits out
  as raw float32 rows.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from fedpeft.client import ClientData, ClientState, FitResult, handle_fit
from fedpeft.client.personal import PersonalKit
from fedpeft.compression import decode, encode
from fedpeft.peft import set_adapter_state
from fedpeft.runtime.local.workers import Meta, instruction_from_json, instruction_json
from fedpeft.server.evaluate import eval_order, predict_batches
from fedpeft.server.task import Task
from fedpeft.types import AdapterState, TrainInstruction

FIT, EVAL = "fit", "eval"
_LEN = struct.Struct(">Q")


def pack(first: bytes, state: ClientState | None) -> bytes:
    """``first`` and an encoded client state (none: empty) as one byte string."""
    rest = encode(state) if state else b""
    return _LEN.pack(len(first)) + first + rest


def unpack(raw: bytes) -> tuple[bytes, ClientState | None]:
    (n,) = _LEN.unpack_from(raw)
    first, rest = raw[_LEN.size : _LEN.size + n], raw[_LEN.size + n :]
    return first, (decode(rest)[0] if rest else None)


def fit_request(ins: TrainInstruction, payload: bytes, kept: ClientState) -> tuple[Meta, bytes]:
    return {"kind": FIT, "instruction": instruction_json(ins)}, pack(payload, kept)


def fit_result(raw: bytes) -> FitResult:
    """A ``fit`` reply's bytes back as the client's ``FitResult``."""
    reply, state = unpack(raw)
    return FitResult(reply, state)


def eval_request(
    state: AdapterState, method: str, options: str, share: tuple[int, int]
) -> tuple[Meta, bytes]:
    meta: Meta = {"kind": EVAL, "method": method, "options": options, "share": list(share)}
    return meta, encode(state)


def logits_from_bytes(raw: bytes, rows: int) -> torch.Tensor:
    """An ``eval`` reply's float32 rows back as a tensor (a copy the caller owns)."""
    values = np.frombuffer(raw, dtype=np.float32)
    return torch.from_numpy(values.copy()).reshape(rows, -1)


def personal_kit(task: Task) -> PersonalKit:
    """What personalisation builds once in a process over the task's shared base."""
    return PersonalKit(
        task.base, task.cfg.peft.method, task.method, task.arch, task.cfg.run.seed,
        task.device, task.data.spec.hub_id,
    )  # fmt: skip


class WorkerJobs:
    """The handler every worker runs: the task it was forked with does the work."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self._kit: PersonalKit | None = None

    def handle(self, meta: Meta, payload: bytes) -> bytes:
        if meta.get("kind") == FIT:
            adapter, kept = unpack(payload)
            result = self.fit(instruction_from_json(meta["instruction"]), adapter, kept or {})
            return pack(result.reply, result.state)
        if meta.get("kind") == EVAL:
            return self.eval(meta, payload)
        raise ValueError(f"unknown worker request kind {meta.get('kind')!r}")

    def fit(self, ins: TrainInstruction, payload: bytes, kept: ClientState) -> FitResult:
        task, cid = self.task, ins.client_id
        model = task.model_for(ins.method, ins.options)
        data = ClientData(task.data.train, task.data.partitions[cid])
        initial = task.initial if ins.compression_down else None
        if self._kit is None:
            self._kit = personal_kit(task)
        return handle_fit(model, payload, ins, data, task.device, kept, initial, self._kit)

    def eval(self, meta: Meta, payload: bytes) -> bytes:
        t = self.task
        state, _ = decode(payload)
        model = t.model_for(str(meta["method"]), str(meta["options"]))
        set_adapter_state(model, state)
        share = meta["share"]
        if not isinstance(share, list) or len(share) != 2:
            raise ValueError(f"an eval share is [start, stop], got {share!r}")
        batches = eval_order(t.data.eval, t.eval_batch_size)[int(share[0]) : int(share[1])]
        logits = predict_batches(model, t.data.eval, batches, t.device)
        return logits.numpy().astype(np.float32, copy=False).tobytes()
