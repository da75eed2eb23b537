"""Round 0: the classifier head starts from the clients' class feature statistics
(``server.head_init = "lda" | "ncm"``, ``aggregation/head_init.py``) instead of at random.

Every client is asked once, through the same pool as a training round, for the sums, counts
and second moment of the features its head receives (``client/features.py``); replies are
checked like updates (keys, shapes, finite values, the client and round they answer for)
and a bad or missing one is left out. What was done is written to ``head_init.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace

import torch

from fedpeft.aggregation.head_init import (
    STATS_COUNT,
    STATS_SECOND,
    STATS_SUM,
    head_keys,
    lda_head,
    ncm_head,
    sum_stats,
)
from fedpeft.client import META_CLIENT_ID, META_ROUND
from fedpeft.client.handler import KIND_FEATURE_STATS, META_NONCE
from fedpeft.compression import CodecError, decode, encode
from fedpeft.config import ExperimentConfig
from fedpeft.server.configure import instruction_for
from fedpeft.server.protocols import BatchedPool, ClientPool, GlobalModel, Request
from fedpeft.server.state import ServerState
from fedpeft.types import AdapterState, TrainInstruction

log = logging.getLogger("fedpeft.server")
HEAD_INIT = "head_init.json"
PERSONAL_PARTS = ("head", "lora_b")  # personalization modes whose tensors stay local


@dataclass(frozen=True)
class HeadInit:
    """What round 0 did (``head_init.json``)."""

    rule: str
    clients: int  # whose statistics were used
    rejected: dict[str, str]  # client id → why its reply was left out
    bytes_down: int
    bytes_up: int
    eval_after: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def init_head(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    run_id: str = "",
) -> tuple[ServerState, HeadInit | None]:
    """``server`` with its main adapter's head set by the configured rule (None: left as is —
    ``random``, no classifier head, or no client answered). ``run_id`` names the run to the
    clients, as in a training round (a Flower node keeps each run's client state apart)."""
    rule = head_rule(cfg)
    if rule == "random" or server.main not in server.adapters:
        return server, None
    glob = server.adapters[server.main]
    try:
        w_key, b_key = head_keys(glob)
    except ValueError:
        return server, None  # e.g. CLIP or instruction tuning: no classifier head
    payload = encode(glob, {"round": 0})
    requests = [
        (
            replace(
                instruction_for(cfg, 0, cid, run_id=run_id),
                kind=KIND_FEATURE_STATS,
                compression="",
                compression_down="",
            ),
            payload,
        )
        for cid in range(cfg.data.num_clients)
    ]
    stats, rejected, up = [], {}, 0
    for (ins, _), reply in zip(requests, _exchange(pool, requests), strict=True):
        try:
            if isinstance(reply, Exception):
                raise reply
            up += len(reply)
            stats.append(_checked(reply, ins, tuple(glob[w_key].shape)))
        except Exception as e:  # noqa: BLE001 - one client must not stop the run
            rejected[str(ins.client_id)] = f"{type(e).__name__}: {e}"
            log.warning("round 0: client %d's statistics left out (%s)", ins.client_id, e)
    if not stats:
        return server, None
    # LDA's rule needs its bias term; a head without bias (LLaMA's score) gets NCM's
    build = lda_head if rule == "lda" and b_key is not None else ncm_head
    adapters = dict(server.adapters)
    adapters[server.main] = build(glob, sum_stats(stats))
    out = server.evolve(adapters=adapters)
    info = HeadInit(
        rule,
        len(stats),
        rejected,
        len(payload) * cfg.data.num_clients,
        up,
        model.evaluate(adapters[server.main]),
    )
    return out, info


def head_rule(cfg: ExperimentConfig) -> str:
    """The configured rule, with ``auto`` resolved: ``lda``, unless differential privacy or
    secure aggregation is on — the statistics are sent as they are, neither noised nor
    masked, so such a run starts the head at random — or clients keep a personal part."""
    rule = cfg.server.head_init
    if rule != "auto":
        return rule
    private = cfg.privacy.mode != "none" or cfg.privacy.secure_aggregation
    return "random" if private or keeps_personal(cfg) else "lda"


def keeps_personal(cfg: ExperimentConfig) -> bool:
    """Whether clients keep a personal part (head, lora_b), which never travels — the
    round-0 request would send it; such a run starts the head at random."""
    return cfg.personalization.mode in PERSONAL_PARTS


def _exchange(pool: ClientPool, requests: list[Request]) -> list[bytes | Exception]:
    """Every request's reply (or why not), all at once where the pool can (Flower)."""
    if isinstance(pool, BatchedPool):
        return list(pool.fit_many(requests))
    replies: list[bytes | Exception] = []
    for ins, payload in requests:
        try:
            replies.append(pool.fit(ins, payload))
        except Exception as e:  # noqa: BLE001 - recorded by the caller
            replies.append(e)
    return replies


def _checked(reply: bytes, ins: TrainInstruction, head: tuple[int, ...]) -> AdapterState:
    """The statistics in a reply, or ``ValueError`` saying what is wrong with them."""
    try:
        stats, meta = decode(reply)
    except CodecError as e:
        raise ValueError(f"reply does not decode ({e})") from None
    if meta.get(META_CLIENT_ID) != ins.client_id or meta.get(META_ROUND) != 0:
        raise ValueError("reply answers for another client or round")
    if meta.get(META_NONCE) != ins.nonce:
        raise ValueError("reply does not echo its instruction's nonce")
    c, h = head
    want = {STATS_SUM: (c, h), STATS_COUNT: (c,), STATS_SECOND: (h, h)}
    if stats.keys() != want.keys() or any(tuple(stats[k].shape) != s for k, s in want.items()):
        raise ValueError(f"statistics should be {want}")
    if not all(bool(torch.isfinite(v).all()) for v in stats.values()):
        raise ValueError("statistics hold NaN or Inf")
    counts = stats[STATS_COUNT]
    if bool((counts < 0).any()) or not all(math.isclose(x, round(x)) for x in counts.tolist()):
        raise ValueError("class counts are not non-negative integers")
    return stats
