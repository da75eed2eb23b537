"""The one builder of ``RoundRecord`` (a line of ``metrics.jsonl``), for both loops."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.config import ExperimentConfig
from fedpeft.types import ClientRecord, ClientUpdate, RoundRecord


def evaluation_due(cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether round (or server step) ``rnd`` ends with central evaluation: every
    ``eval.every`` rounds and always the last one."""
    return rnd % cfg.eval.every == 0 or rnd >= cfg.run.rounds


def round_record(
    rnd: int,
    clients: Sequence[ClientRecord],
    accepted: Sequence[ClientUpdate],
    evals: dict[str, dict[str, float]],
    main: str,
    *,
    wall_time_s: float,
    eval_time_s: float,
    fit_time_s: float = 0.0,
    sim_time_s: float | None = None,
    sim_clock_s: float | None = None,
    quorum: bool = True,
    secure: tuple[int, float] | None = None,
) -> RoundRecord:
    """A round (or asynchronous server step) from its clients' records and accepted updates;
    ``evals`` holds each group's evaluation (none in a round without evaluation), ``main``
    names the group reported as ``eval``; ``fit_time_s`` is the wall time the clients' round
    trips took (with parallel clients, less than their summed training time). Under secure
    aggregation no update is seen: ``secure`` gives (clients summed, their mean loss)."""
    n = sum(u.num_examples for u in accepted)
    loss = sum(u.metrics.get("loss", 0.0) * u.num_examples for u in accepted) / max(n, 1)
    count = len(accepted)
    if secure is not None:
        count, loss = secure
    return RoundRecord(
        round=rnd,
        sampled=[c.client_id for c in clients],
        accepted=count,
        rejected=len(clients) - count,
        bytes_down=sum(c.bytes_down for c in clients),
        bytes_up=sum(c.bytes_up for c in clients),
        train_loss=loss,
        eval=evals.get(main, {}),
        wall_time_s=wall_time_s,
        eval_time_s=eval_time_s,
        client_time_s=sum(c.metrics.get("train_time_s", 0.0) for c in clients),
        fit_time_s=fit_time_s,
        clients=list(clients),
        groups=evals if len(evals) > 1 else {},
        sim_time_s=sim_time_s,
        sim_clock_s=sim_clock_s,
        quorum=quorum,
    )
