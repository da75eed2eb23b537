"""Secure aggregation in the synchronous round loop (``privacy.secure_aggregation``): the
server learns only the sum of the round's updates.

The round's sends go through the pool in four stages, each an instruction kind whose
payload and reply are the messages of ``privacy.secagg`` (``client/secagg.py`` is the
client half)::

    setup → share_keys → masked_input (+ the training payload; the client trains here)
          → unmask → Σ_u [w_u·Δ_u, w_u, w_u·loss_u]

A client that fails or sends bytes that do not decode at a stage leaves the round there;
one that leaves after sharing its keys has its masks removed through its neighbours'
Shamir shares, so the survivors' sum is still recovered (``SecAggServer``). Too few
survivors abort the round's sum (``SecAggAborted``): the round is skipped with the reason
logged, never a crash.

What the server can check is the protocol (every message decodes, each masked vector has
the right length, the stages' client sets are consistent) and the sum: its count must be
positive and at most the examples the survivors hold (``ClientPool.num_examples``). It
cannot check single updates (no norm guard, no per-update NaN check, no server-side
clipping): clients clip before masking.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedpeft.client import derive_seed
from fedpeft.client.secagg import (
    KIND_MASKED_INPUT,
    KIND_SETUP,
    KIND_SHARE_KEYS,
    KIND_UNMASK,
    join_payload,
    secure_length,
    split_sum,
)
from fedpeft.config import PrivacyConfig
from fedpeft.errors import ClientSkipped, FedpeftError
from fedpeft.privacy import PrivacyLedger
from fedpeft.privacy.secagg import FixedPoint, SecAggAborted, SecAggServer
from fedpeft.privacy.secagg.messages import (
    EncryptedShares,
    MaskedInput,
    MessageError,
    PublicKeys,
    UnmaskShares,
    decode,
    encode,
)
from fedpeft.server.protocols import BatchedPool, ClientPool, Request, SimulatedPool
from fedpeft.server.receive import FitClock, Received, Sent, client_record
from fedpeft.types import AdapterState, ClientRecord, ClientStatus

log = logging.getLogger("fedpeft.server")

STAGES = ("setup", "share_keys", "masked_input", "unmask")
_KINDS = dict(
    zip(STAGES, (KIND_SETUP, KIND_SHARE_KEYS, KIND_MASKED_INPUT, KIND_UNMASK), strict=True)
)
_GRAPH = 0x5EC4  # the neighbour graph's stream of (seed, round)


@dataclass
class SecureSum:
    """A round under secure aggregation: each client's record, and what the server
    learned — ``Σ w_c Δ_c`` (float64, shaped like the served view), ``Σ w_c`` and
    ``Σ w_c·loss_c`` over the survivors (``total`` None: no sum this round, ``info``
    says why)."""

    received: list[Received]
    total: AdapterState | None
    weight: float = 0.0
    loss: float = 0.0
    survivors: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # metrics.jsonl's secure_aggregation


@dataclass
class _Client:
    """One client's progress through the stages (the server's side)."""

    sent: Sent
    down: int = 0
    up: int = 0
    seconds: float = 0.0
    sim: float | None = None
    status: ClientStatus | None = None  # set when it left the round
    reason: str = ""


@dataclass
class _Cost:
    bytes_down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    bytes_up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    wait_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    server_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.server_s[stage] += time.perf_counter() - start

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "wait_s": {k: round(v, 6) for k, v in self.wait_s.items()},
            "server_s": {k: round(v, 6) for k, v in self.server_s.items()},
        }


def secure_collect(
    pool: ClientPool,
    sent: Sequence[Sent],
    privacy: PrivacyConfig,
    seed: int,
    on_done: Callable[[ClientRecord], None] | None = None,
    clock: FitClock | None = None,
) -> SecureSum:
    """The four stages with every client in ``sent`` (one group, one view), and the sum."""
    if not sent:
        return SecureSum([], None, info={"skipped": "no client was sent anything"})
    if len({s.instruction.group for s in sent}) > 1:
        raise FedpeftError(
            "`privacy.secure_aggregation` sums one group's updates, but this round serves "
            "several groups; turn the allocation and clustering off."
        )
    rnd, template = sent[0].instruction.round, sent[0].start
    clients = {s.instruction.client_id: _Client(s) for s in sent}
    cost, clock = _Cost(), clock or FitClock()
    try:
        server = SecAggServer(
            rnd, list(clients), secure_length(template), FixedPoint(),
            privacy.secagg_neighbours, privacy.secagg_threshold,
            derive_seed(seed, rnd, _GRAPH),
        )  # fmt: skip
        stage = _Stages(pool, clients, cost, clock)
        keys = stage.run("setup", cost.timed("setup", server.setup), PublicKeys)
        books = cost.timed("share_keys", lambda: server.on_public_keys(keys))
        shares = stage.run("share_keys", stage.cut(books, "setup"), EncryptedShares)
        forwarded = cost.timed("masked_input", lambda: server.on_encrypted_shares(shares))
        masked = stage.run("masked_input", stage.cut(forwarded, "share_keys"), MaskedInput)
        requests = cost.timed("unmask", lambda: server.on_masked_inputs(masked))
        answers = stage.run("unmask", stage.cut(requests, "masked_input"), UnmaskShares)
        result = cost.timed("unmask", lambda: server.on_unmask_shares(answers))
    except (SecAggAborted, ValueError) as e:
        return _lost(clients, str(e), cost, on_done)
    info = cost.to_json() | {
        "survivors": len(result.survivors),
        "dropped_after_keys": list(result.dropped),
        "threshold": server.threshold,
        "vector_length": server.length,
        "clamped": result.clamped,
    }
    summed, weight, loss = split_sum(result.total, template)
    problem = _check_sum(summed, weight, result.survivors, pool, privacy.mode == "central")
    if problem:
        return _lost(clients, problem, cost, on_done, info)
    if result.clamped:
        log.warning("round %d: %d values clamped to the fixed-point range", rnd, result.clamped)
    for cid in result.survivors:
        c = clients[cid]
        if c.status is not None:  # it sent its masked input, then no unmask shares
            c.reason = f"its input counts; {c.reason}"
        c.status = ClientStatus.OK
    received = _records(clients, on_done)
    return SecureSum(received, summed, weight, loss, len(result.survivors), info)


class _Stages:
    """Sends one stage's messages through the pool and decodes the replies."""

    def __init__(
        self, pool: ClientPool, clients: dict[int, _Client], cost: _Cost, clock: FitClock
    ) -> None:
        self.pool, self.clients, self.cost, self.clock = pool, clients, cost, clock

    def cut(self, messages: Mapping[int, Any], previous: str) -> Mapping[int, Any]:
        """Clients that answered ``previous`` but were left out by the protocol leave."""
        for cid, c in self.clients.items():
            if c.status is None and cid not in messages:
                self._leave(c, ClientStatus.REJECTED, f"its {previous} reply was not accepted")
        return messages

    def run(self, stage: str, messages: Mapping[int, Any], expected: type) -> dict[int, Any]:
        kind = _KINDS[stage]
        requests: list[Request] = []
        for cid, msg in messages.items():
            c = self.clients[cid]
            data = encode(msg)
            if stage == "masked_input":
                data = join_payload(data, c.sent.payload)
            requests.append((replace(c.sent.instruction, kind=kind), data))
        replies = self._exchange(stage, requests)
        out: dict[int, Any] = {}
        for (ins, data), reply in zip(requests, replies, strict=True):
            c = self.clients[ins.client_id]
            self.cost.bytes_down[stage] += len(data)
            if isinstance(reply, ClientSkipped):
                down = 0 if reply.status is ClientStatus.OFFLINE else len(data)
                c.down += down
                self._leave(c, reply.status, f"{stage}: {reply}")
                continue
            c.down += len(data)
            if isinstance(reply, Exception):
                self._leave(c, ClientStatus.FAILED, f"{stage}: {type(reply).__name__}: {reply}")
                continue
            c.up += len(reply)
            self.cost.bytes_up[stage] += len(reply)
            try:
                out[ins.client_id] = decode(reply, expected)
            except MessageError as e:
                self._leave(c, ClientStatus.REJECTED, f"{stage}: {e}")
                continue
            if stage == "masked_input" and isinstance(self.pool, SimulatedPool):
                c.sim = self.pool.sim_seconds(ins.round, ins.client_id)
        return out

    def _exchange(self, stage: str, requests: list[Request]) -> list[bytes | Exception]:
        start = time.perf_counter()
        try:
            if isinstance(self.pool, BatchedPool):
                return list(self.pool.fit_many(requests))
            replies: list[bytes | Exception] = []
            for ins, payload in requests:
                began = time.perf_counter()
                try:
                    replies.append(self.pool.fit(ins, payload))
                except Exception as e:  # noqa: BLE001 - a failing client leaves the round
                    replies.append(e)
                self.clients[ins.client_id].seconds += time.perf_counter() - began
            return replies
        finally:
            spent = time.perf_counter() - start
            self.clock.seconds += spent
            self.cost.wait_s[stage] += spent

    def _leave(self, c: _Client, status: ClientStatus, reason: str) -> None:
        ins = c.sent.instruction
        if status is ClientStatus.FAILED or status is ClientStatus.REJECTED:
            log.warning("round %d: client %d left secure aggregation at %s", ins.round,
                        ins.client_id, reason)  # fmt: skip
        c.status, c.reason = status, reason


def _check_sum(
    summed: AdapterState, weight: float, survivors: Sequence[int], pool: ClientPool, central: bool
) -> str:
    """Why the unmasked sum cannot be used ("" when it can): what the server can still check."""
    if not all(bool(torch.isfinite(v).all()) for v in summed.values()):
        return "the unmasked sum is not finite"
    if central:  # every honest client sends the weight 1
        if abs(weight - len(survivors)) > 0.5:
            return f"the summed weight {weight:.6g} is not the {len(survivors)} survivors' count"
        return ""
    held = [pool.num_examples(c) for c in survivors]
    if not math.isfinite(weight) or weight < 0.5:
        return f"the summed example count {weight:.6g} is not positive"
    if all(n is not None for n in held) and weight > sum(n or 0 for n in held) + 0.5:
        return (
            f"the summed example count {weight:.6g} is more than the survivors hold "
            f"({sum(n or 0 for n in held)})"
        )
    return ""


def _lost(
    clients: dict[int, _Client],
    reason: str,
    cost: _Cost,
    on_done: Callable[[ClientRecord], None] | None,
    info: dict[str, Any] | None = None,
) -> SecureSum:
    """The round's sum is lost: clients still in are recorded as rejected with the reason."""
    rnd = next(iter(clients.values())).sent.instruction.round
    log.warning("round %d: secure aggregation gave no sum (%s); the round is skipped", rnd, reason)
    for c in clients.values():
        if c.status is None:
            c.status, c.reason = ClientStatus.REJECTED, f"no sum this round: {reason}"
    info = (info or cost.to_json()) | {"skipped": reason}
    return SecureSum(_records(clients, on_done), None, info=info)


def _records(
    clients: dict[int, _Client], on_done: Callable[[ClientRecord], None] | None
) -> list[Received]:
    out = []
    for c in clients.values():
        status = c.status or ClientStatus.FAILED
        record = client_record(c.sent, status, c.reason, down=c.down, up=c.up, sim_time_s=c.sim)
        if c.seconds:
            record = replace(record, metrics={"secagg_round_trip_s": c.seconds})
        out.append(Received(c.sent, record))
        if on_done is not None:
            on_done(record)
    return out


def secure_view(
    summed: AdapterState,
    weight: float,
    view: AdapterState,
    ledger: PrivacyLedger | None,
    generator: torch.Generator,
    sampled: int,
    frozen: tuple[str, ...] = (),
) -> AdapterState:
    """The served view moved by the mean update: ``θ + Σ w_c Δ_c / Σ w_c`` (FedAvg), or under
    central DP ``θ + (Σ clip(Δ_c, S) + N(0, σ²S²)) / m`` with the noise added once to the
    sum (``PrivacyLedger.release_sum``), m the clients sampled."""
    if ledger is not None and ledger.mode == "central":
        mean = ledger.release_sum(summed, sampled, generator, frozen)
    else:
        mean = {k: v.to(torch.float64) / weight for k, v in summed.items()}
    return {k: (v.to(torch.float64) + mean[k]).to(v.dtype) for k, v in view.items()}


def weighted_loss(total: SecureSum) -> float:
    """The survivors' mean training loss, weighted by examples (0 under central DP)."""
    return total.loss / total.weight if total.weight > 0 and np.isfinite(total.loss) else 0.0
