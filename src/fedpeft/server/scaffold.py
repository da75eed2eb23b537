"""SCAFFOLD in the synchronous round loop (``server.aggregator = "scaffold"``): the server
keeps one control variate ``c`` per group (``ServerState.controls``, checkpointed), sends it
beside the adapter as ``x/scaffold/c/<key>``, expects ``Δc_i`` back as ``x/scaffold/dc/<key>``
(validated like the update: keys, shapes, dtypes, finite) and, once the round's model update
is aggregated, moves ``c ← c + (|S|/N)·mean_i Δc_i`` over the accepted replies
(``aggregation.drift.server_control``; Karimireddy et al., 2020, Alg. 1 line 17). The client
half is ``client/scaffold.py``.

A rejected reply (validation, norm guard) contributes neither its update nor its ``Δc_i``;
a round without quorum leaves ``c`` unchanged, as it leaves the adapters. The client has
moved its ``c_i`` either way, so from then on ``c`` is no longer exactly the mean of the
``c_i`` (as in the paper when a message is lost). ``Δc_i`` is checked for keys, shapes and
finiteness, and for size by the same rule as ``server.norm_guard``: with at least three in a
group, a ``Δc_i`` whose norm is over ``norm_guard`` times the group's median is left out of
``c`` (logged), so one client cannot move the control arbitrarily far.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping

from fedpeft.aggregation.drift import server_control, zeros_like_state
from fedpeft.client.scaffold import CONTROL, DELTA, SCAFFOLD, under_prefix, with_prefix

__all__ = [
    "SCAFFOLD",
    "check_scaffold",
    "control_payload",
    "group_control",
    "reply_template",
    "updated_controls",
]
from fedpeft.config import ExperimentConfig
from fedpeft.errors import refuse_first
from fedpeft.server.receive import Received
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.server")


def group_control(
    controls: Mapping[str, AdapterState], group: str, view: AdapterState
) -> AdapterState:
    """The group's ``c`` (zeros, shaped like ``view``, before its first update)."""
    return dict(controls[group]) if group in controls else zeros_like_state(view)


def control_payload(control: AdapterState) -> AdapterState:
    """``c`` as the payload's extras."""
    return with_prefix(control, CONTROL)


def reply_template(control: AdapterState) -> AdapterState:
    """What a reply must carry beside its update: ``Δc_i`` keyed and shaped like ``c``."""
    return with_prefix(zeros_like_state(control), DELTA)


def updated_controls(
    controls: Mapping[str, AdapterState],
    adapters: Mapping[str, AdapterState],
    accepted: Mapping[int, Received],
    num_clients: int,
    guard: float = 0.0,
) -> dict[str, AdapterState]:
    """Each group's ``c`` moved by its accepted clients' ``Δc_i`` (``N = num_clients``);
    ``guard`` > 0 leaves out a ``Δc_i`` over ``guard`` × the group's median norm."""
    deltas: dict[str, list[tuple[int, AdapterState]]] = {}
    for cid, r in sorted(accepted.items()):
        if r.update is not None:
            delta = under_prefix(r.update.extras, DELTA)
            deltas.setdefault(r.sent.instruction.group, []).append((cid, delta))
    out = dict(controls)
    for name, pairs in sorted(deltas.items()):
        group_deltas = _guarded(name, pairs, guard)
        current = group_control(controls, name, adapters[name])
        try:
            out[name] = server_control(current, group_deltas, num_clients)
        except ValueError as e:  # validated replies fit; a round must not crash the run
            log.warning("SCAFFOLD control of group %s not updated (%s)", name, e)
    return out


def _guarded(group: str, pairs: list[tuple[int, AdapterState]], guard: float) -> list[AdapterState]:
    """The ``Δc_i`` within ``guard`` × the median norm (all of them below three, or guard 0)."""
    if guard <= 0 or len(pairs) < 3:
        return [d for _, d in pairs]
    norms = [_norm(d) for _, d in pairs]
    limit = guard * statistics.median(norms)
    kept = []
    for (cid, delta), norm in zip(pairs, norms, strict=True):
        if norm > limit:
            log.warning(
                "SCAFFOLD: client %d's control delta (norm %.3g) is over %.3g × the median of "
                "group %s; left out of c",
                cid,
                norm,
                guard,
                group,
            )
        else:
            kept.append(delta)
    return kept


def _norm(state: AdapterState) -> float:
    return math.sqrt(sum(float(v.double().square().sum()) for v in state.values()))


def check_scaffold(cfg: ExperimentConfig) -> None:
    """Refuses, before anything loads, what SCAFFOLD cannot run with: each refusal names the
    field. Its extras travel as plain float32 tensors beside the adapter, the server needs
    every client's ``Δc_i`` and one ``c`` per group that all its clients share."""
    if cfg.server.aggregator != SCAFFOLD:
        return
    c, p = cfg.compression, cfg.privacy
    refusals = (
        (cfg.server.mode != "sync", "`server.mode` must be 'sync'"),
        (c.bits_up != 32 or c.topk is not None, "`compression.bits_up` must be 32 and "
         "`compression.topk` unset (the control deltas are not compressed)"),
        (c.bits_down != 32, "`compression.bits_down` must be 32 (the control c is not "
         "compressed)"),
        (p.mode != "none", f"`privacy.mode` must be 'none', got {p.mode!r} (the controls "
         "carry unclipped, un-noised gradients)"),
        (p.secure_aggregation, "`privacy.secure_aggregation` must be off (the server needs "
         "each Δc_i)"),
        (cfg.allocation.enabled, "`allocation.enabled` must be false (one control per "
         "configuration group is not supported)"),
        (cfg.personalization.mode in ("head", "lora_b", "dual"), "`personalization.mode` must "
         f"not keep a personal part, got {cfg.personalization.mode!r}"),
    )  # fmt: skip
    refuse_first("`server.aggregator = 'scaffold'`", refusals)
