"""One path for every reply, in both loops: send, receive, validate, clip, guard, record.

A reply ends as exactly one ``ClientRecord`` status (``types.ClientStatus``): ``ok`` (its
update is accepted), ``rejected`` (it replied, but the reply failed validation or the norm
guard), ``failed`` (no usable reply) or one of the skipped statuses a runtime raises with
``ClientSkipped``. Failures, skips and rejections are logged with their reason; the round
goes on.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from fedpeft.errors import ClientSkipped
from fedpeft.server.protocols import BatchedPool, ClientPool, SimulatedPool
from fedpeft.server.validate import RejectedUpdate, clip_update, validate_reply
from fedpeft.types import AdapterState, ClientRecord, ClientStatus, ClientUpdate, TrainInstruction

log = logging.getLogger("fedpeft.server")


@dataclass(frozen=True)
class Sent:
    """One client's instruction, the bytes it was sent and the state those bytes hold (what
    its reply is validated and clipped against)."""

    instruction: TrainInstruction
    payload: bytes
    start: AdapterState
    config: str = ""  # the configuration's name (allocated runs)
    tier: str = ""  # its device's tier (runtimes that know devices)
    extras: AdapterState = field(default_factory=dict)  # the x/… tensors the reply must carry


@dataclass(frozen=True)
class Received:
    """What became of one ``Sent``; ``update`` is set only when the status is ``ok``."""

    sent: Sent
    record: ClientRecord
    update: ClientUpdate | None = None


def client_record(
    sent: Sent,
    status: ClientStatus,
    reason: str = "",
    *,
    down: int = 0,
    up: int = 0,
    update: ClientUpdate | None = None,
    sim_time_s: float | None = None,
    update_norm: float | None = None,
) -> ClientRecord:
    """The one place a ``ClientRecord`` is built."""
    ins = sent.instruction
    return ClientRecord(
        round=ins.round,
        client_id=ins.client_id,
        status=status,
        reason=reason,
        num_examples=update.num_examples if update else 0,
        bytes_down=down,
        bytes_up=up,
        metrics=dict(update.metrics) if update else {},
        group=ins.group,
        config=sent.config,
        sim_time_s=sim_time_s,
        tier=sent.tier,
        update_norm=update_norm,
    )


def collect(
    pool: ClientPool,
    sent: Sequence[Sent],
    clip_norm: float | None = None,
    on_done: Callable[[ClientRecord], None] | None = None,
) -> list[Received]:
    """Every request's round trip, received in order; ``on_done`` sees each record as it
    lands (a batched pool's all at once, after the round's replies are in)."""
    pairs: Iterable[tuple[Sent, bytes | Exception]]
    if isinstance(pool, BatchedPool):
        replies = pool.fit_many([(s.instruction, s.payload) for s in sent])
        pairs = zip(sent, replies, strict=True)
    else:
        pairs = ((s, _fit(pool, s)) for s in sent)  # lazily: each lands before the next goes
    out = []
    for s, reply in pairs:
        received = receive(pool, s, reply, clip_norm)
        out.append(received)
        if on_done is not None:
            on_done(received.record)
    return out


def _fit(pool: ClientPool, sent: Sent) -> bytes | Exception:
    try:
        return pool.fit(sent.instruction, sent.payload)
    except Exception as e:  # noqa: BLE001 - a failing client must not stop the round
        return e


def receive(
    pool: ClientPool, sent: Sent, reply: bytes | Exception, clip_norm: float | None = None
) -> Received:
    """Validates one reply against what was sent; clips it when ``clip_norm`` is set."""
    ins, down = sent.instruction, len(sent.payload)
    where = f"round {ins.round}: client {ins.client_id}"
    if isinstance(reply, ClientSkipped):
        log.info("%s %s: %s", where, reply.status, reply)
        sent_bytes = 0 if reply.status is ClientStatus.OFFLINE else down  # offline: got nothing
        return Received(
            sent,
            client_record(
                sent, reply.status, str(reply), down=sent_bytes, sim_time_s=reply.sim_time_s
            ),
        )
    if isinstance(reply, Exception):
        reason = f"{type(reply).__name__}: {reply}"
        log.warning("%s failed: %s", where, reason)
        return Received(sent, client_record(sent, ClientStatus.FAILED, reason, down=down))
    try:
        n = pool.num_examples(ins.client_id)
        update = validate_reply(reply, sent.start, ins, n, sent.extras)
        update, norm = clip_update(update, sent.start, clip_norm)
    except RejectedUpdate as e:
        log.warning("%s: update rejected: %s", where, e)
        record = client_record(sent, ClientStatus.REJECTED, str(e), down=down, up=len(reply))
        return Received(sent, record)
    seconds = (
        pool.sim_seconds(ins.round, ins.client_id) if isinstance(pool, SimulatedPool) else None
    )
    record = client_record(
        sent,
        ClientStatus.OK,
        down=down,
        up=len(reply),
        update=update,
        sim_time_s=seconds,
        update_norm=norm,
    )
    return Received(sent, record, update)


def local_steps(ins: TrainInstruction, num_examples: int) -> int:
    """The steps a client asked by ``ins`` trains on ``num_examples`` (the server's own count,
    not the client's claim)."""
    return ins.steps or ins.epochs * max(1, math.ceil(num_examples / ins.batch_size))


def step_norm(received: Received) -> float | None:
    """An accepted update's norm per local step (Adam moves every step by about the learning
    rate, so this is comparable across clients that trained different numbers of steps)."""
    if received.update is None or received.record.update_norm is None:
        return None
    steps = local_steps(received.sent.instruction, received.update.num_examples)
    return received.record.update_norm / steps


def guard_norms(
    received: Sequence[Received], factor: float | None, history: Sequence[float] = ()
) -> list[Received]:
    """The default guard: an accepted update whose norm per local step is more than
    ``factor`` × the median of its group's (this batch's accepted updates of the same
    configuration and ``history``, at least 3 values) is rejected, with the reason logged.
    ``factor`` 0 or None turns it off. Groups are judged apart: methods move by different
    amounts per step."""
    if not factor:
        return list(received)
    by_config: dict[str, list[float]] = {}
    for r in received:
        n = step_norm(r)
        if n is not None:
            by_config.setdefault(r.sent.config or r.sent.instruction.group, []).append(n)
    out = []
    for r in received:
        n = step_norm(r)
        pool = [*by_config.get(r.sent.config or r.sent.instruction.group, []), *history]
        limit = factor * statistics.median(pool) if len(pool) >= 3 else math.inf
        if n is None or n <= limit or limit <= 0:
            out.append(r)
            continue
        ins = r.sent.instruction
        reason = (
            f"update norm per local step {n:.3g} is over {factor:g}× the median "
            f"{limit / factor:.3g} (server.norm_guard)"
        )
        log.warning("round %d: client %d: update rejected: %s", ins.round, ins.client_id, reason)
        record = replace(r.record, status=ClientStatus.REJECTED, reason=reason, num_examples=0)
        out.append(Received(r.sent, record))
    return out
