"""One round trip per client: send, receive, validate, record. Failures, skipped clients
and bad replies are logged and recorded; the round goes on."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from fedpeft.errors import ClientSkipped
from fedpeft.server.assign import Assignment
from fedpeft.server.validate import RejectedUpdate, clip_update, validate_reply
from fedpeft.types import ClientRecord, TrainInstruction

if TYPE_CHECKING:
    from fedpeft.server.loop import Observer, _Round

log = logging.getLogger("fedpeft.server")

Request = tuple[TrainInstruction, bytes]


class ClientPool(Protocol):
    """How the server reaches clients: bytes in, bytes out.

    Optional, used when present: ``fit_many(requests) -> list[bytes | Exception]`` (a whole
    round at once), ``resources(cid)`` and ``data_profile(cid)`` (for the allocation), and
    ``sim_seconds(round, cid)`` (a simulated device's round time).
    """

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes: ...

    def num_examples(self, client_id: int) -> int | None:
        """How many examples the client reported having (None: unknown)."""
        ...


def collect(pool: ClientPool, requests: list[Request], work: _Round, observer: Observer) -> None:
    """Every request's round trip; failures and bad replies are logged, the round goes on."""
    fit_many = getattr(pool, "fit_many", None)
    replies: list[bytes | Exception] = fit_many(requests) if fit_many else []
    for i, (ins, down) in enumerate(requests):
        if fit_many is None:
            try:
                replies.append(pool.fit(ins, down))
            except Exception as e:  # noqa: BLE001 - a failing client must not stop the round
                replies.append(e)
        work.done(check_reply(pool, ins, down, replies[i], work), observer)


def check_reply(
    pool: ClientPool, ins: TrainInstruction, down: bytes, reply: bytes | Exception, work: _Round
) -> ClientRecord:
    cid, a = ins.client_id, work.assigned[ins.client_id]
    if isinstance(reply, ClientSkipped):
        log.info("round %d: client %d %s: %s", ins.round, cid, reply.status, reply)
        sent = 0 if reply.status == "offline" else len(down)  # an offline device gets nothing
        return client_record(ins, reply.status, str(reply), sent, 0, 0, {}, a, reply.sim_time_s)
    if isinstance(reply, Exception):
        log.warning(
            "round %d: client %d failed: %s: %s", ins.round, cid, type(reply).__name__, reply
        )
        return client_record(
            ins, "failed", f"{type(reply).__name__}: {reply}", len(down), 0, 0, {}, a
        )
    try:
        update = validate_reply(reply, work.views[cid], ins, pool.num_examples(cid))
        update, norm = clip_update(update, work.views[cid], work.clip_norm)
    except RejectedUpdate as e:
        log.warning("round %d: update from client %d rejected: %s", ins.round, cid, e)
        return client_record(ins, "rejected", str(e), len(down), len(reply), 0, {}, a)
    work.accepted[cid] = update
    sim = getattr(pool, "sim_seconds", None)
    seconds = sim(ins.round, cid) if sim else None
    record = client_record(
        ins, "ok", "", len(down), len(reply), update.num_examples, update.metrics, a, seconds
    )
    return replace(record, update_norm=norm)


def client_record(
    ins: TrainInstruction,
    status: str,
    reason: str,
    down: int,
    up: int,
    n: int,
    metrics: dict[str, float],
    assignment: Assignment | None = None,
    sim_time_s: float | None = None,
) -> ClientRecord:
    return ClientRecord(
        round=ins.round,
        client_id=ins.client_id,
        status=status,
        reason=reason,
        num_examples=n,
        bytes_down=down,
        bytes_up=up,
        metrics=metrics,
        group=assignment.group if assignment else ins.group,
        config=assignment.config if assignment else "",
        sim_time_s=sim_time_s,
    )
