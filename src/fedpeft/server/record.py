"""The one builder of ``RoundRecord`` (a line of ``metrics.jsonl``), for both loops."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.types import ClientRecord, ClientUpdate, RoundRecord


def round_record(
    rnd: int,
    clients: Sequence[ClientRecord],
    accepted: Sequence[ClientUpdate],
    evals: dict[str, dict[str, float]],
    main: str,
    *,
    wall_time_s: float,
    eval_time_s: float,
    sim_time_s: float | None = None,
    sim_clock_s: float | None = None,
    quorum: bool = True,
) -> RoundRecord:
    """A round (or asynchronous server step) from its clients' records and accepted updates;
    ``evals`` holds each group's evaluation, ``main`` names the group reported as ``eval``."""
    n = sum(u.num_examples for u in accepted)
    loss = sum(u.metrics.get("loss", 0.0) * u.num_examples for u in accepted) / max(n, 1)
    return RoundRecord(
        round=rnd,
        sampled=[c.client_id for c in clients],
        accepted=len(accepted),
        rejected=len(clients) - len(accepted),
        bytes_down=sum(c.bytes_down for c in clients),
        bytes_up=sum(c.bytes_up for c in clients),
        train_loss=loss,
        eval=evals.get(main, {}),
        wall_time_s=wall_time_s,
        eval_time_s=eval_time_s,
        client_time_s=sum(c.metrics.get("train_time_s", 0.0) for c in clients),
        clients=list(clients),
        groups=evals if len(evals) > 1 else {},
        sim_time_s=sim_time_s,
        sim_clock_s=sim_clock_s,
        quorum=quorum,
    )
