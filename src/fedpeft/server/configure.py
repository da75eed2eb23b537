"""What each sampled client is sent: its configuration, its view of its group's global, the
instruction (with a fresh nonce) and the encoded bytes — the ``Sent`` that ``receive``
checks its reply against."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fedpeft.allocation import ClientInfo, predict_cost
from fedpeft.compression import CompressionScheme, encode, layout_of, up_scheme
from fedpeft.config import ExperimentConfig
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture
from fedpeft.profiling import ResourceProfile
from fedpeft.server.assign import Assigner, Assignment, client_infos, options_json
from fedpeft.server.bits import BitsChoice, adaptive_bits
from fedpeft.server.groups import GroupBook
from fedpeft.server.protocols import ClientPool, ProfiledPool
from fedpeft.server.receive import Received, Sent, client_record
from fedpeft.server.state import DEFAULT_GROUP, ServerState
from fedpeft.server.strategy import Strategy
from fedpeft.types import AdapterState, ClientStatus, TrainInstruction


def instruction_for(
    cfg: ExperimentConfig,
    rnd: int,
    client_id: int,
    freeze: tuple[str, ...] = (),
    assignment: Assignment | None = None,
    scheme: CompressionScheme | None = None,
    run_id: str = "",
) -> TrainInstruction:
    """The instruction for one client and round; its nonce is fresh and unpredictable (the
    reply must echo it), everything else follows from the config, the assignment and the
    reply's compression ``scheme`` (default: ``compression.bits_up``/``topk``)."""
    c = cfg.client
    cand = assignment.candidate if assignment else None
    if scheme is None and cfg.compression.bits_up != "adaptive":
        scheme = up_scheme(cfg.compression)
    return TrainInstruction(
        round=rnd,
        client_id=client_id,
        epochs=c.epochs,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.fixed_lr,
        weight_decay=c.weight_decay,
        proximal_mu=c.proximal_mu,
        label_skew=c.label_skew,
        label_skew_tau=c.label_skew_tau,
        head_lr=c.head_lr,
        seed=cfg.run.seed,
        freeze=freeze,
        method=cand.method if cand else "",
        options=options_json(cand.options) if cand else "{}",
        group=assignment.group if assignment else DEFAULT_GROUP,
        nonce=secrets.token_hex(8),
        compression=scheme.to_json() if scheme is not None and not scheme.identity else "",
        run_id=run_id,
    )


@dataclass
class RoundPlan:
    """A round's sends, the groups' globals grown to serve them, and who was not sent."""

    adapters: dict[str, AdapterState]
    sent: list[Sent] = field(default_factory=list)
    unassigned: list[Received] = field(default_factory=list)
    assigned: dict[int, Assignment] = field(default_factory=dict)  # clients sent something
    bits: dict[int, BitsChoice] = field(default_factory=dict)  # adaptive bit widths chosen


def plan_round(
    cfg: ExperimentConfig,
    strategy: Strategy,
    pool: ClientPool,
    assigner: Assigner,
    book: GroupBook,
    state: ServerState,
    rnd: int,
    sampled: Sequence[int],
    run_id: str = "",
) -> RoundPlan:
    """Each sampled client's assignment, view of its group's global and instruction."""
    profiled = pool if isinstance(pool, ProfiledPool) else None
    tiers = {c: _tier(profiled, c) for c in sampled}
    assigned = (
        assigner.assign(_client_infos(cfg, profiled, sampled))
        if assigner.enabled
        else {cid: assigner.fixed(cid) for cid in sampled}
    )
    plan = RoundPlan(dict(state.adapters))
    for cid in sampled:
        a = assigned[cid]
        if strategy.partition is not None:  # clustered: served by its cluster's global
            a = replace(a, group=state.group_of(cid, a.group))
        if a.candidate is None:
            ins = instruction_for(cfg, rnd, cid, strategy.client_freeze, a, run_id=run_id)
            sent = Sent(ins, b"", {}, a.config, tiers[cid])
            record = client_record(sent, ClientStatus.UNASSIGNED, a.reason)
            plan.unassigned.append(Received(sent, record))
            continue
        plan.adapters[a.group], view = book.serve(plan.adapters, a)
        scheme = None
        if cfg.compression.bits_up == "adaptive":
            plan.bits[cid] = _adaptive(cfg, profiled, assigner.arch, a, view, cid)
            scheme = plan.bits[cid].scheme
        ins = instruction_for(cfg, rnd, cid, strategy.client_freeze, a, scheme, run_id)
        plan.assigned[cid] = a
        plan.sent.append(Sent(ins, encode(view, {"round": rnd}), view, a.config, tiers[cid]))
    return plan


def _adaptive(
    cfg: ExperimentConfig,
    pool: ProfiledPool | None,
    arch: Architecture | None,
    a: Assignment,
    view: AdapterState,
    cid: int,
) -> BitsChoice:
    """The client's upload bit width from its bandwidth and the round deadline, its compute
    and download time predicted by the cost model (``server.bits.adaptive_bits``)."""
    profile = pool.resources(cid) if pool is not None else None
    data = pool.data_profile(cid) if pool is not None else None
    if profile is None or data is None or a.candidate is None or arch is None:
        raise FedpeftError(
            "`compression.bits_up = 'adaptive'` needs each client's device and data profile; "
            f"client {cid} reported none."
        )
    (info,) = client_infos(cfg, [cid], [profile], [data])
    deadline = cfg.allocation.deadline_s
    cost = predict_cost(arch, a.candidate.spec, info.workload, profile)
    return adaptive_bits(layout_of(view), cfg.compression, profile, deadline, cost)


def _tier(pool: ProfiledPool | None, client_id: int) -> str:
    profile = pool.resources(client_id) if pool is not None else None
    return profile.tier if profile is not None else ""


def _client_infos(
    cfg: ExperimentConfig, pool: ProfiledPool | None, sampled: Sequence[int]
) -> list[ClientInfo]:
    if pool is None:
        raise FedpeftError(
            "`allocation.enabled` needs clients that report their resources and data profile; "
            "this runtime's clients do not."
        )
    devices: list[ResourceProfile] = []
    data: list[DataProfile] = []
    for cid in sampled:
        device, profile = pool.resources(cid), pool.data_profile(cid)
        if device is None or profile is None:
            raise FedpeftError(
                f"`allocation.enabled` needs every client's resource and data profile; "
                f"client {cid} reported none."
            )
        devices.append(device)
        data.append(profile)
    return client_infos(cfg, sampled, devices, data)
