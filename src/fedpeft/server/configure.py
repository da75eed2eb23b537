"""What each sampled client is sent: its configuration, its view of its group's global, the
instruction (with a fresh nonce) and the encoded bytes — the ``Sent`` that ``receive``
checks its reply against."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fedpeft.allocation import ClientInfo, predict_cost
from fedpeft.client.personal import PersonalPlan, shared_view
from fedpeft.compression import (
    CompressionScheme,
    decode_update,
    down_scheme,
    encode,
    encode_update,
    layout_of,
    rounding_generator,
    up_scheme,
)
from fedpeft.config import ExperimentConfig
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture
from fedpeft.profiling import ResourceProfile
from fedpeft.server.assign import Assigner, Assignment, client_infos, options_json
from fedpeft.server.bits import BitsChoice, adaptive_bits
from fedpeft.server.groups import GroupBook
from fedpeft.server.merge import merged_extras
from fedpeft.server.protocols import ClientPool, ProfiledPool
from fedpeft.server.receive import Received, Sent, client_record
from fedpeft.server.scaffold import SCAFFOLD, control_payload, group_control, reply_template
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
    personal: PersonalPlan | None = None,
    objective: str = "",
) -> TrainInstruction:
    """The instruction for one client and round; its nonce is fresh and unpredictable (the
    reply must echo it), everything else follows from the config, the assignment, the
    reply's compression ``scheme`` (default: ``compression.bits_up``/``topk``) and the rule's
    client half (``objective``, e.g. ``"scaffold"``)."""
    c = cfg.client
    cand = assignment.candidate if assignment else None
    if scheme is None and cfg.compression.bits_up != "adaptive":
        scheme = up_scheme(cfg.compression)
    return TrainInstruction(
        round=rnd,
        client_id=client_id,
        epochs=c.epochs,
        steps=assignment.steps if assignment and assignment.steps else c.steps,
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
        compression_down=_scheme_json(down_scheme(cfg.compression)),
        run_id=run_id,
        personal=personal.to_json() if personal is not None and personal != PersonalPlan() else "",
        objective=objective,
    )


def _scheme_json(scheme: CompressionScheme | None) -> str:
    return scheme.to_json() if scheme is not None and not scheme.identity else ""


@dataclass(frozen=True)
class Payload:
    """What a client is sent for a view: the bytes, and the state they decode to on the
    client (``None``: exactly the view)."""

    data: bytes
    served: AdapterState | None = None


def payload_for(
    cfg: ExperimentConfig,
    view: AdapterState,
    initial: AdapterState | None,
    rnd: int,
    extras: AdapterState | None = None,
) -> Payload:
    """The view as bytes (with ``extras``, the ``x/…`` tensors a client half needs, beside
    it): plain, or with ``compression.bits_down`` as ``Q(view − θ_init)``
    (issue 15's downlink). Quantising the distance from the initial adapter, which every
    client rebuilds from the config, keeps each round's error independent (nothing
    accumulates) and small (the distance is what training added). The rounding is seeded
    by the run and the round, so every client of a round gets the same bytes."""
    scheme = down_scheme(cfg.compression)
    if scheme is None:
        return Payload(encode(view | (extras or {}), {"round": rnd}))
    if extras:
        raise FedpeftError(
            "`compression.bits_down` below 32 cannot carry a client half's extra tensors "
            "(SCAFFOLD's control); set `compression.bits_down = 32`."
        )
    if not initial or initial.keys() != view.keys():
        raise FedpeftError(
            "`compression.bits_down` needs the run's initial adapter on both sides; this "
            "runtime does not provide it for this configuration (use bits_down = 32)."
        )
    gen = rounding_generator(cfg.run.seed, rnd, -1)
    data = encode_update(view, initial, scheme, None, gen, {"round": rnd}).payload
    return Payload(data, decode_update(data, initial)[0])


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
    initial: AdapterState | None = None,
    personal: PersonalPlan | None = None,
) -> RoundPlan:
    """Each sampled client's assignment, view of its group's global and instruction; the
    view leaves out what ``personal`` keeps on the clients (they neither get nor send it)."""
    profiled = pool if isinstance(pool, ProfiledPool) else None
    tiers = {c: _tier(profiled, c) for c in sampled}
    assigned = (
        assigner.assign(profiled_infos(cfg, profiled, sampled), rnd)
        if assigner.enabled
        else {cid: assigner.fixed(cid) for cid in sampled}
    )
    plan = RoundPlan(dict(state.adapters))
    payloads: dict[tuple[str, str], Payload] = {}  # one encoding per view (group, config)
    for cid in sampled:
        a = assigned[cid]
        if strategy.partition is not None:  # clustered: served by its cluster's global
            a = replace(a, group=state.group_of(cid, a.group))
        if a.candidate is None:
            ins = instruction_for(
                cfg, rnd, cid, strategy.client_freeze, a, run_id=run_id, personal=personal
            )
            sent = Sent(ins, b"", {}, a.config, tiers[cid])
            record = client_record(sent, ClientStatus.UNASSIGNED, a.reason)
            plan.unassigned.append(Received(sent, record))
            continue
        plan.adapters[a.group], view = book.serve(plan.adapters, a)
        view = shared_view(view, personal)
        scheme = None
        if cfg.compression.bits_up == "adaptive":
            plan.bits[cid] = _adaptive(cfg, profiled, assigner.arch, a, view, cid)
            scheme = plan.bits[cid].scheme
        ins = instruction_for(
            cfg, rnd, cid, strategy.client_freeze, a, scheme, run_id, personal,
            strategy.client_objective,
        )  # fmt: skip
        plan.assigned[cid] = a
        view, sent_x, reply_x = _extras(strategy, state, a.group, view)
        if (a.group, a.config) not in payloads:  # a config's view of its group's envelope
            payloads[(a.group, a.config)] = payload_for(cfg, view, initial, rnd, sent_x)
        p = payloads[(a.group, a.config)]
        plan.sent.append(Sent(ins, p.data, view, a.config, tiers[cid], reply_x, p.served))
    return plan


def _extras(
    strategy: Strategy, state: ServerState, group: str, view: AdapterState
) -> tuple[AdapterState, AdapterState, AdapterState]:
    """(the view the client trains and sends back, the ``x/…`` tensors sent beside it, those
    the reply must carry): SCAFFOLD's ``c`` and ``Δc_i`` (``server/scaffold.py``), FLoRA's
    merged sums, which go down only (``server/merge.py``); none for other rules."""
    if strategy.merges:
        return (*merged_extras(view), {})
    if strategy.client_objective != SCAFFOLD:
        return view, {}, {}
    control = group_control(state.controls, group, view)
    return view, control_payload(control), reply_template(control)


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


def profiled_infos(
    cfg: ExperimentConfig, pool: ProfiledPool | None, sampled: Sequence[int]
) -> list[ClientInfo]:
    """What the allocation knows of each of ``sampled``, from the pool's profiles."""
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
