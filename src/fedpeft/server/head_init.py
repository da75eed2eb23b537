"""Round 0: the classifier head starts from the clients' class feature statistics
(``server.head_init = "lda" | "ncm"``, ``aggregation/head_init.py``) instead of at random.

Every client is asked once, through the same pool as a training round, for the sums, counts
and second moment of the features its head receives (``client/features.py``); replies are
checked like updates (keys, shapes, finite values, the client and round they answer for)
and a bad or missing one is left out. What was done is written to ``head_init.json``.

With ``allocation.enabled`` the groups do not exist yet: the policy assigns every client
as it would a round (``Assigner``, round 0), each group's global is created as the round
would create it (``GroupBook.serve``: one envelope for every LoRA configuration), and each
client is asked with its own configuration's view of its group. A group's head is the rule
over its own clients' statistics — in the LoRA envelope that is every LoRA client, whatever
its rank or layers, since they all share the envelope's one head; every other method group
has its own head. A client the policy leaves out (e.g. one whose memory holds no
configuration) is not asked. The main group is the one whose clients hold most examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import torch

from fedpeft.aggregation.head_init import (
    STATS_COUNT,
    STATS_SECOND,
    STATS_SUM,
    bias_midpoints,
    head_keys,
    lda_head,
    ncm_head,
    sum_stats,
)
from fedpeft.client import META_CLIENT_ID, META_ROUND
from fedpeft.client.handler import KIND_CLASS_MEANS, KIND_FEATURE_STATS, META_NONCE
from fedpeft.compression import CodecError, decode, encode
from fedpeft.config import ExperimentConfig
from fedpeft.peft import Architecture
from fedpeft.server.assign import Assigner
from fedpeft.server.configure import instruction_for, profiled_infos
from fedpeft.server.groups import GroupBook
from fedpeft.server.head_when import head_rule
from fedpeft.server.protocols import (
    BatchedPool,
    ClientPool,
    GlobalModel,
    PartedPool,
    ProfiledPool,
    Request,
)
from fedpeft.server.state import ServerState
from fedpeft.types import AdapterState, TrainInstruction

log = logging.getLogger("fedpeft.server")
HEAD_INIT = "head_init.json"


@dataclass(frozen=True)
class HeadInit:
    """What round 0 did (``head_init.json``)."""

    rule: str
    clients: int  # whose statistics were used
    rejected: dict[str, str]  # client id → why its reply was left out
    bytes_down: int
    bytes_up: int
    eval_after: dict[str, float]  # the main group's
    groups: dict[str, dict[str, object]] = field(default_factory=dict)  # clients, eval_after
    not_asked: dict[str, str] = field(default_factory=dict)  # client id → the policy's reason

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Ask:
    """One client's statistics request: the group whose head its reply sets, the
    instruction and the bytes of its view."""

    group: str
    instruction: TrainInstruction
    payload: bytes


@dataclass(frozen=True)
class _Round0:
    """Who is asked, and the groups' globals they are served from."""

    adapters: dict[str, AdapterState]
    asks: list[_Ask]
    book: GroupBook | None = None  # allocated runs: the configurations each group served
    not_asked: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Collected:
    """The checked statistics of every client asked, summed by group (a running float64
    sum: with 1,000 clients, keeping each client's second moment until the end cost
    gigabytes)."""

    plan: _Round0
    asks: list[_Ask]
    totals: dict[str, AdapterState]
    answered: dict[str, list[int]]  # group → the clients whose statistics it uses
    rejected: dict[str, str]  # client id → why its reply was left out
    bytes_up: int

    def heads(self, rule: str) -> dict[str, AdapterState]:
        """Each answered group's adapter with its head set by ``rule``."""
        out = {}
        for group, total in sorted(self.totals.items()):
            adapter = self.plan.adapters[group]
            out[group] = _rule(rule, adapter)(adapter, total)
        return out


def init_head(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    run_id: str = "",
    arch: Architecture | None = None,
) -> tuple[ServerState, HeadInit | None]:
    """``server`` with its groups' heads set by the configured rule (None: left as is —
    ``random``, no classifier head, or no client answered). ``run_id`` names the run to the
    clients, as in a training round (a Flower node keeps each run's client state apart);
    ``arch`` is the model's architecture, which an allocated run's policy needs."""
    rule = head_rule(cfg)
    if rule == "random":
        return server, None
    got = _collect(cfg, pool, model, server, run_id, arch, 0)
    if got is None:
        return server, None
    adapters = dict(got.plan.adapters) | got.heads(rule)
    out, evals = _settled(server, got.plan, adapters, got.totals, model)
    info = HeadInit(
        rule,
        sum(len(v) for v in got.answered.values()),
        got.rejected,
        sum(len(a.payload) for a in got.asks),
        got.bytes_up,
        evals[out.main],
        {g: {"clients": got.answered[g], "eval_after": evals[g]} for g in sorted(got.totals)},
        got.plan.not_asked,
    )
    return out, info


def refresh_head(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    run_id: str,
    arch: Architecture | None,
    rnd: int,
    part: str = "head",
) -> tuple[ServerState, dict[str, object]]:
    """Classifier re-calibration after round ``rnd``'s aggregation (CCVR-style, Luo et al.
    2021, but with the round-0 rule instead of sampled virtual features): every client sends
    the class feature statistics of its data under the trained global adapter, and each
    group's head becomes the rule over them — or, with ``part = "bias"``, only its bias
    moves (``bias_midpoints``). Only the head's tensors change; the groups, their members
    and the rest of each adapter stay as the round left them. No library does this over
    PEFT adapters, hence our own. Returns the new state and what was done (clients, bytes,
    rejected replies) for the round's record; a bias refresh where no group's head has a
    bias (e.g. LLaMA's score) asks nobody and returns ``{}``."""
    if part == "bias" and not any(_has_bias(a) for a in server.adapters.values()):
        return server, {}
    kind = KIND_CLASS_MEANS if part == "bias" else KIND_FEATURE_STATS  # the rule's statistics
    got = _collect(cfg, pool, model, server, run_id, arch, rnd, kind)
    if got is None:
        return server, {}
    adapters = dict(server.adapters)
    used = [g for g in got.totals if g in adapters]  # a group the round did not keep is skipped
    headed: dict[str, AdapterState] = {}
    if part == "bias":
        for g, total in sorted(got.totals.items()):
            if not _has_bias(got.plan.adapters[g]):
                continue
            moved = _moved_bias(g, got.plan.adapters[g], total, rnd)
            if moved is not None:
                headed[g] = moved
    else:
        headed = got.heads(head_rule(cfg))
    shifts: dict[str, float] = {}
    for group, new in headed.items():
        if group not in adapters:
            continue
        current = dict(adapters[group])
        w_key, b_key = head_keys(new)
        for key in (k for k in (w_key, b_key) if k is not None):
            if part == "bias" and key != b_key:
                continue
            if key in current and current[key].shape == new[key].shape:
                if key == b_key:
                    change = (new[key].double() - current[key].double()).abs().max()
                    shifts[group] = round(float(change), 6)
                current[key] = new[key].to(current[key].dtype)
        adapters[group] = current
    info: dict[str, object] = {
        "part": part,
        "bias_shift_max": shifts,  # per group: the largest change of one class's bias
        "clients": sum(len(got.answered[g]) for g in used),  # whose statistics set a head
        "bytes_down": sum(len(a.payload) for a in got.asks),  # everything sent and received
        "bytes_up": got.bytes_up,
    }
    if got.rejected:
        info["rejected"] = got.rejected
    if got.plan.not_asked:
        info["not_asked"] = got.plan.not_asked
    return server.evolve(adapters=adapters), info


def _moved_bias(
    group: str, state: AdapterState, total: AdapterState, rnd: int
) -> AdapterState | None:
    """``bias_midpoints`` of ``state`` over ``total``, or None (logged) where it fails or
    gives a bias that is not finite: the group keeps the bias its round left — the
    statistics came from clients, and a step after the last round must not cost the run."""
    try:
        out = bias_midpoints(state, total)
    except ValueError as e:
        log.warning("round %d: group %s's bias is left as it was (%s)", rnd, group, e)
        return None
    _, b_key = head_keys(out)
    if b_key is not None and not bool(torch.isfinite(out[b_key]).all()):
        log.warning("round %d: group %s's bias is left as it was (not finite)", rnd, group)
        return None
    return out


def _has_bias(state: AdapterState) -> bool:
    try:
        return head_keys(state)[1] is not None
    except ValueError:  # no classifier head in this group
        return False


def _collect(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    run_id: str,
    arch: Architecture | None,
    rnd: int,
    kind: str = KIND_FEATURE_STATS,
) -> _Collected | None:
    """Every client asked for its statistics (as of round ``rnd``; ``kind``: with the second
    moment, or class means only) under its view of its group's global; None where nobody
    is asked or nobody answered."""
    if cfg.allocation.enabled and cfg.server.mode == "sync":
        plan = _allocated(cfg, pool, model, server, run_id, arch, rnd, kind)
    elif server.main in server.adapters:
        plan = _homogeneous(cfg, server, run_id, rnd, kind)
    else:
        return None
    shapes = _head_shapes(plan.adapters, {a.group for a in plan.asks})
    asks = [a for a in plan.asks if a.group in shapes]  # e.g. CLIP: no classifier head
    if not asks:
        return None
    totals: dict[str, AdapterState] = {}
    answered: dict[str, list[int]] = {}
    rejected, up = {}, 0
    replies = _exchange(pool, [(a.instruction, a.payload) for a in asks])
    for ask, reply in zip(asks, replies, strict=True):
        ins = ask.instruction
        try:
            if isinstance(reply, Exception):
                raise reply
            up += len(reply)
            checked = _checked(reply, ins, shapes[ask.group])  # before the group's entry
            before = totals.get(ask.group)
            totals[ask.group] = sum_stats([checked] if before is None else [before, checked])
            answered.setdefault(ask.group, []).append(ins.client_id)
        except Exception as e:  # noqa: BLE001 - one client must not stop the run
            rejected[str(ins.client_id)] = f"{type(e).__name__}: {e}"
            log.warning("round %d: client %d's statistics left out (%s)", rnd, ins.client_id, e)
    if not totals:
        return None
    return _Collected(plan, asks, totals, answered, rejected, up)


def _homogeneous(
    cfg: ExperimentConfig, server: ServerState, run_id: str, rnd: int, kind: str
) -> _Round0:
    """Every client, served the main group's global."""
    payload = encode(server.adapters[server.main], {"round": rnd})
    asks = [
        _Ask(
            server.main,
            _stats_instruction(instruction_for(cfg, rnd, c, run_id=run_id), kind),
            payload,
        )
        for c in range(cfg.data.num_clients)
    ]
    return _Round0(dict(server.adapters), asks)


def _allocated(
    cfg: ExperimentConfig,
    pool: ClientPool,
    model: GlobalModel,
    server: ServerState,
    run_id: str,
    arch: Architecture | None,
    rnd: int,
    kind: str,
) -> _Round0:
    """Every client the policy assigns at round ``rnd`` (0: before training), served its
    configuration's view of its group's global (created, or grown, as a round would)."""
    assigner = Assigner(cfg, arch)
    assigner.restore(server.gain)
    profiled = pool if isinstance(pool, ProfiledPool) else None
    clients = list(range(cfg.data.num_clients))
    not_asked: dict[str, str] = {}
    if profiled is not None:  # a client that has not reported (Flower) is not asked
        unknown = [c for c in clients if not _profiled(profiled, c)]
        not_asked = {str(c): "it reported no resource or data profile" for c in unknown}
        clients = [c for c in clients if c not in unknown]
    assigned = assigner.assign(profiled_infos(cfg, profiled, clients), rnd) if clients else {}
    book, adapters, asks = GroupBook(model, server.members), dict(server.adapters), []
    payloads: dict[tuple[str, str], bytes] = {}  # one encoding per view (group, config)
    for cid in clients:
        a = assigned[cid]
        if a.candidate is None:
            not_asked[str(cid)] = a.reason
            continue
        adapters[a.group], view = book.serve(adapters, a)
        if (a.group, a.config) not in payloads:
            payloads[(a.group, a.config)] = encode(view, {"round": rnd})
        ins = instruction_for(cfg, rnd, cid, assignment=a, run_id=run_id)
        ins = _stats_instruction(ins, kind)
        asks.append(_Ask(a.group, ins, payloads[(a.group, a.config)]))
    return _Round0(adapters, asks, book, not_asked)


def _profiled(pool: ProfiledPool, client_id: int) -> bool:
    return pool.resources(client_id) is not None and pool.data_profile(client_id) is not None


def _stats_instruction(ins: TrainInstruction, kind: str) -> TrainInstruction:
    """A training instruction turned into a statistics request (plain both ways)."""
    return replace(ins, kind=kind, compression="", compression_down="")


def _head_shapes(adapters: dict[str, AdapterState], groups: set[str]) -> dict[str, tuple[int, ...]]:
    """Each group's head weight shape; a group without a classifier head is left out."""
    out = {}
    for group in groups:
        try:
            w_key, _ = head_keys(adapters[group])
        except ValueError:
            continue
        out[group] = tuple(adapters[group][w_key].shape)
    return out


def _rule(rule: str, state: AdapterState) -> Callable[[AdapterState, AdapterState], AdapterState]:
    """LDA's rule needs its bias term; a head without bias (LLaMA's score) gets NCM's."""
    return lda_head if rule == "lda" and head_keys(state)[1] is not None else ncm_head


def _settled(
    server: ServerState,
    plan: _Round0,
    adapters: dict[str, AdapterState],
    totals: dict[str, AdapterState],
    model: GlobalModel,
) -> tuple[ServerState, dict[str, dict[str, float]]]:
    """The new server state and each headed group's evaluation. An allocated run keeps
    the groups that got a head (with the configurations that served them), its main group
    the one whose statistics count most examples, and the evaluations as the accuracy R's
    first gain is measured from."""
    if plan.book is None:
        evals = {g: model.evaluate(adapters[g]) for g in totals}
        return server.evolve(adapters=adapters), evals
    book = plan.book
    evals = {g: model.evaluate(*book.eval_state(g, adapters[g])) for g in totals}
    kept = {g: s for g, s in adapters.items() if g in totals or g in server.adapters}
    examples = {g: float(t[STATS_COUNT].sum()) for g, t in totals.items()}
    main = max(sorted(examples), key=lambda g: examples[g])
    members = {g: m for g, m in book.snapshot().items() if g in kept}
    last = dict(server.last_accuracy) | {
        g: e["accuracy"] for g, e in evals.items() if "accuracy" in e
    }
    out = server.evolve(adapters=kept, members=members, main=main, last_accuracy=last)
    return out, evals


EXCHANGE_PART = 64  # requests an in-process batched pool is sent at once


def _exchange(pool: ClientPool, requests: list[Request]) -> Iterator[bytes | Exception]:
    """Every request's reply (or why not), in order, as they come, so that the caller sums
    and drops them (each holds an h×h second moment: 0.6 MB for MiniLM, 0.6 GB for 1,000
    clients): an in-process batched pool gets ``EXCHANGE_PART`` requests at a time, Flower
    the whole round at once (its ``server.min_clients`` is a rule over the whole round), a
    sequential pool one at a time."""
    if isinstance(pool, PartedPool):
        for start in range(0, len(requests), EXCHANGE_PART):
            yield from pool.fit_part(requests[start : start + EXCHANGE_PART])
        return
    if isinstance(pool, BatchedPool):
        yield from pool.fit_many(requests)
        return
    for ins, payload in requests:
        try:
            yield pool.fit(ins, payload)
        except Exception as e:  # noqa: BLE001 - recorded by the caller
            yield e


def _checked(reply: bytes, ins: TrainInstruction, head: tuple[int, ...]) -> AdapterState:
    """The statistics in a reply, or ``ValueError`` saying what is wrong with them."""
    try:
        stats, meta = decode(reply)
    except CodecError as e:
        raise ValueError(f"reply does not decode ({e})") from None
    if meta.get(META_CLIENT_ID) != ins.client_id or meta.get(META_ROUND) != ins.round:
        raise ValueError("reply answers for another client or round")
    if meta.get(META_NONCE) != ins.nonce:
        raise ValueError("reply does not echo its instruction's nonce")
    c, h = head
    want = {STATS_SUM: (c, h), STATS_COUNT: (c,)}
    want |= {STATS_SECOND: (h, h)} if ins.kind == KIND_FEATURE_STATS else {}
    if stats.keys() != want.keys() or any(tuple(stats[k].shape) != s for k, s in want.items()):
        raise ValueError(f"statistics should be {want}")
    if not all(bool(torch.isfinite(v).all()) for v in stats.values()):
        raise ValueError("statistics hold NaN or Inf")
    counts = stats[STATS_COUNT]
    if bool((counts < 0).any()) or not all(math.isclose(x, round(x)) for x in counts.tolist()):
        raise ValueError("class counts are not non-negative integers")
    if not bool(counts.sum() > 0):
        raise ValueError("statistics count no example")
    if bool(stats[STATS_SUM][counts == 0].abs().sum() > 0):
        raise ValueError("a class with no example has a non-zero feature sum")
    return stats
