"""Forked training workers over ONE base: several clients at once, the base never copied.

Each worker is a child process forked from the server process once the task is built, so
it starts with the frozen base model already in memory; the operating system shares those
pages copy-on-write and nothing writes to them (the base is frozen), so a worker's own
memory is what training allocates: its adapter, optimiser state and activations. Workers
run one intra-op thread each (GNU OpenMP cannot start a thread team in a forked child of a
process that already used one).

Messages are the runtime's own bytes and never pickles: a request is a JSON header (what
to do: ``jobs.py``) plus a payload (an encoded adapter); a reply is a JSON status plus
bytes. A client's result depends only on (seed, round, client) and the payload, never on
which worker trained it, so a run gives the same adapters whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import BinaryIO

import torch

from fedpeft.errors import ClientSkipped
from fedpeft.types import ClientStatus, TrainInstruction

log = logging.getLogger("fedpeft.runtime.local")

Meta = dict[str, object]
Handler = Callable[[Meta, bytes], bytes]
"""What a worker runs for one request (header, payload): the reply's bytes."""

_HEADER = struct.Struct(">II")  # JSON length, payload length


class WorkerDied(RuntimeError):
    """A worker process exited while it trained a client (e.g. killed for memory)."""


def write_frame(stream: BinaryIO, meta: Meta, payload: bytes) -> None:
    head = json.dumps(meta).encode()
    stream.write(_HEADER.pack(len(head), len(payload)) + head + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> tuple[Meta, bytes] | None:
    """One frame, or ``None`` at a clean end of stream."""
    raw = stream.read(_HEADER.size)
    if not raw:
        return None
    if len(raw) < _HEADER.size:
        raise EOFError("truncated frame header")
    n_meta, n_payload = _HEADER.unpack(raw)
    meta, payload = stream.read(n_meta), stream.read(n_payload)
    if len(meta) < n_meta or len(payload) < n_payload:
        raise EOFError("truncated frame")
    return json.loads(meta), payload


def instruction_json(ins: TrainInstruction) -> Meta:
    return dataclasses.asdict(ins)


def instruction_from_json(raw: object) -> TrainInstruction:
    if not isinstance(raw, dict):
        raise ValueError(f"an instruction is a JSON object, got {type(raw).__name__}")
    fields = dict(raw)
    fields["freeze"] = tuple(fields.get("freeze", ()))
    return TrainInstruction(**fields)


def serve(requests: BinaryIO, replies: BinaryIO, handler: Handler) -> None:
    """A worker's loop: one reply per request until the server closes the request pipe."""
    while (frame := read_frame(requests)) is not None:
        try:
            write_frame(replies, {"status": "ok"}, handler(*frame))
        except ClientSkipped as e:
            skip = {"status": "skipped", "skip": e.status.value, "reason": str(e)}
            write_frame(replies, skip | {"sim_time_s": e.sim_time_s}, b"")
        except Exception as e:  # noqa: BLE001 - the server records a failed client
            write_frame(replies, {"status": "error", "reason": f"{type(e).__name__}: {e}"}, b"")


def _reply(meta: Meta, payload: bytes) -> bytes | Exception:
    if meta["status"] == "ok":
        return payload
    if meta["status"] == "skipped":
        sim = meta.get("sim_time_s")
        sim_time = float(sim) if isinstance(sim, int | float) else None
        return ClientSkipped(ClientStatus(str(meta["skip"])), str(meta["reason"]), sim_time)
    return RuntimeError(str(meta.get("reason", "the worker failed")))


class _Worker:
    """The server's end of one worker: its pid and its two pipes."""

    def __init__(self, pid: int, requests: BinaryIO, replies: BinaryIO) -> None:
        self.pid, self.requests, self.replies = pid, requests, replies
        self.exit: str | None = None  # how it ended, once reaped

    def send(self, meta: Meta, payload: bytes) -> None:
        write_frame(self.requests, meta, payload)

    def receive(self) -> bytes | Exception:
        try:
            frame = read_frame(self.replies)
        except (EOFError, OSError):
            frame = None
        if frame is None:
            raise WorkerDied(f"training worker {self.pid} exited {self.reap()}")
        return _reply(*frame)

    def close(self) -> None:
        for stream in (self.requests, self.replies):
            with contextlib.suppress(OSError):
                stream.close()

    def alive(self) -> bool:
        """Whether it still runs (reaping it if it has ended)."""
        if self.exit is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit = "(reaped elsewhere)"
            return False
        if pid == 0:
            return True
        self.exit = _describe(status)
        return False

    def reap(self) -> str:
        """Closes its pipes and waits for it to end; how it ended."""
        self.close()
        if self.exit is None:
            try:
                self.exit = _describe(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:
                self.exit = "(reaped elsewhere)"
        return self.exit


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"with signal {-code}" if code < 0 else f"with code {code}"


class ForkedWorkers:
    """``size`` forked workers that run ``handler``; started on the first ``run``."""

    def __init__(self, size: int, handler: Handler, threads: int = 1) -> None:
        if size < 1:
            raise ValueError(f"`size` should be positive, got {size}.")
        self.size, self.handler, self.threads = size, handler, threads
        self._workers: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def run(
        self, requests: Sequence[tuple[Meta, bytes]], costs: Sequence[float]
    ) -> list[bytes | Exception]:
        """Every request's reply (or why not), in request order. The costliest requests go
        first, each to the next idle worker, so the round ends as early as it can."""
        for worker in [w for w in self._workers if not w.alive()]:
            self._replace(worker)  # it died between calls (e.g. killed for memory)
        while len(self._workers) < min(self.size, len(requests)):
            self._workers.append(self._spawn())
        order = deque(sorted(range(len(requests)), key=lambda i: (-costs[i], i)))
        out: list[bytes | Exception | None] = [None] * len(requests)
        idle, busy = list(self._workers), dict[int, tuple[_Worker, int]]()
        while order or busy:
            while order and idle:
                worker, i = idle.pop(), order.popleft()
                try:
                    worker.send(*requests[i])
                    busy[worker.replies.fileno()] = (worker, i)
                except OSError:  # it died while idle: the request goes to its replacement
                    order.appendleft(i)
                    idle.append(self._replace(worker))
            if not busy:
                continue
            ready, _, _ = select.select(list(busy), [], [])
            for fd in ready:
                worker, i = busy.pop(fd)
                try:
                    out[i] = worker.receive()
                    idle.append(worker)
                except WorkerDied as e:
                    out[i] = e
                    idle.append(self._replace(worker))
        return [r if r is not None else RuntimeError("no reply") for r in out]

    def _replace(self, worker: _Worker) -> _Worker:
        """A freshly forked worker in place of one that died."""
        worker.reap()
        self._workers.remove(worker)
        self._workers.append(self._spawn())
        return self._workers[-1]

    def close(self) -> None:
        """Ends every worker (each exits when its request pipe closes)."""
        workers, self._workers = self._workers, []
        for w in workers:
            w.reap()

    def _spawn(self) -> _Worker:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns, never runs the server's exit handlers
            code = 1
            try:
                os.close(req_w)
                os.close(rep_r)
                for other in self._workers:
                    other.close()  # a worker holds no other worker's pipe ends
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's
                torch.set_num_threads(self.threads)
                with os.fdopen(req_r, "rb") as requests, os.fdopen(rep_w, "wb") as replies:
                    serve(requests, replies, self.handler)
                code = 0
            except BrokenPipeError:
                code = 0  # the server went away mid-reply
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(rep_w)
        log.debug("forked training worker %d", pid)
        return _Worker(pid, os.fdopen(req_w, "wb"), os.fdopen(rep_r, "rb"))
