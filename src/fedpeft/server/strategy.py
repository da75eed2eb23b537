"""A strategy composed from parts: an aggregation rule, an optional server optimiser, and
the client half some rules need (e.g. FFA-LoRA's frozen A, SCAFFOLD's corrected gradients) —
no inheritance.

Rules that need more than ``list[(state, n_c)]`` (see ``aggregation.registry``) get it here:
a ``needs_eval`` rule gets the server's ``evaluate_proxy`` bound into ``aggregate``; a
``partition`` rule (clustered) and a ``fuse`` rule (distillation across PEFT methods) expose
those parts, which a loop holding several global adapters ("groups") calls.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from fedpeft.aggregation import Aggregator, aggregator_parts, get_aggregator
from fedpeft.aggregation.registry import AggregatorParts, Fuse, Partition
from fedpeft.aggregation.server_opt import FedAdam, FedAvgM, FedYogi, ServerOptimizer
from fedpeft.config import ServerConfig
from fedpeft.errors import FedpeftError
from fedpeft.server.fusion import FUSION_STEPS
from fedpeft.types import AdapterState


@dataclass(frozen=True)
class Strategy:
    aggregate: Aggregator
    server_optimizer: ServerOptimizer | None = None
    client_freeze: tuple[str, ...] = ()  # parameter-name parts clients must not train
    partition: Partition | None = None  # (states, start states) → group labels; None: one group
    fuse: Fuse | None = None  # (models by group, proxy batches) → fused state by group
    clip_norm: float | None = None  # each update's Δ is clipped to this L2 norm on arrival
    needs_eval: bool = False  # the rule weighs clients by the server's proxy loss
    linear: bool = False  # the rule is the weighted mean of the states (FedAvg-equivalent)
    client_objective: str = ""  # the rule's client half ("scaffold": control variates)
    merges: bool = False  # the round's LoRA product is merged into the global (FLoRA)


def strategy_from_config(
    cfg: ServerConfig,
    evaluate_proxy: Callable[[AdapterState], float] | None = None,
    *,
    groups: bool = False,
) -> Strategy:
    """The configured strategy for a loop that says what it supports: ``evaluate_proxy(state)
    → loss`` on the server's proxy set (needed by ``needs_eval`` rules, e.g. ``layerwise``),
    ``groups`` (it holds one global per group, needed by ``partition`` rules, e.g.
    ``clustered``). A rule the loop cannot run is refused instead of quietly running as
    another."""
    parts = aggregator_parts(cfg.aggregator)
    if parts.partition is not None and not groups:
        raise FedpeftError(
            f"`server.aggregator` {cfg.aggregator!r} keeps one global adapter per client "
            "group, which this runtime's round loop cannot hold yet; choose another aggregator."
        )
    aggregate, partition, fuse = _with_options(
        cfg.aggregator, cfg.aggregator_options, get_aggregator(cfg.aggregator), parts
    )
    if parts.needs_eval:
        if evaluate_proxy is None:
            raise FedpeftError(
                f"`server.aggregator` {cfg.aggregator!r} weighs clients by a server-side "
                "proxy loss, but this runtime provides no proxy evaluation set; choose another "
                "aggregator."
            )
        aggregate = partial(aggregate, loss_fn=evaluate_proxy)
    return Strategy(
        aggregate=aggregate,
        server_optimizer=_optimizer(cfg),
        client_freeze=parts.freeze,
        partition=partition,
        fuse=fuse,
        clip_norm=cfg.clip_norm,
        needs_eval=parts.needs_eval,
        linear=parts.linear,
        client_objective=parts.objective,
        merges=parts.merges,
    )


# Parameters the loop owns: the proxy callback, and target ranks (the global's shapes are the
# clients' template, so a rule must not change them).
_LOOP_OWNED = frozenset({"loss_fn", "rank", "max_rank"})
_UNIONS = (typing.Union, types.UnionType)


def _keywords(fn: Callable[..., Any]) -> dict[str, tuple[type, ...]]:
    """A part's tunable keywords and the types each accepts (from its annotations)."""
    base = fn
    while isinstance(base, partial):
        base = base.func
    hints = typing.get_type_hints(base)
    out: dict[str, tuple[type, ...]] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.default is inspect.Parameter.empty or p.name in _LOOP_OWNED:
            continue
        hint = hints.get(p.name, type(p.default))
        members = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
        kinds = tuple(m for m in members if isinstance(m, type) and m is not type(None))
        out[p.name] = kinds or (str,)  # a Literal of names: a string
    return out


def _kind_ok(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _with_options(
    name: str,
    options: dict[str, Any],
    aggregate: Callable[..., AdapterState],
    parts: AggregatorParts,
) -> tuple[Callable[..., AdapterState], Partition | None, Fuse | None]:
    """``server.aggregator_options`` bound into the part that takes each keyword (the rule,
    its partition step or its fusion step), checked by kind and by one trial call of the rule
    and partition step on tiny updates, so a bad value is a config error, not a round
    that quietly fails."""
    fns: dict[str, Callable[..., Any] | None] = {
        "rule": aggregate,
        "partition": parts.partition,
        "fuse": FUSION_STEPS[parts.fuse] if parts.fuse else None,
    }
    if not options:
        return aggregate, fns["partition"], fns["fuse"]
    accepted = {part: _keywords(fn) for part, fn in fns.items() if fn is not None}
    bound: dict[str, dict[str, Any]] = {part: {} for part in fns}
    for key, value in options.items():
        owner = next((part for part, kws in accepted.items() if key in kws), None)
        if owner is None:
            valid = sorted({k for kws in accepted.values() for k in kws})
            raise FedpeftError(
                f"`server.aggregator_options.{key}` is not an option of aggregator {name!r}; "
                f"its options are: {', '.join(valid) or 'none'}."
            )
        kinds = accepted[owner][key]
        if not _kind_ok(value, kinds):
            kind = " or ".join(k.__name__ for k in kinds)
            raise FedpeftError(
                f"`server.aggregator_options.{key}` should be of type {kind}, got {value!r}."
            )
        bound[owner][key] = value
    out = {
        part: partial(fn, **bound[part]) if fn and bound[part] else fn for part, fn in fns.items()
    }
    _trial(name, out["rule"], out["partition"], parts.needs_eval)
    rule = out["rule"]
    assert rule is not None
    return rule, out["partition"], out["fuse"]


def _trial(
    name: str, rule: Callable[..., Any] | None, partition: Callable[..., Any] | None, proxy: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    # 32 tiny clients: enough that count-bounded options (multi_krum's m, k) are not refused
    states = [{"w": torch.randn(4, generator=gen)} for _ in range(32)]
    start = {"w": torch.zeros(4)}
    try:
        if rule is not None:
            extra = {"loss_fn": lambda s: 1.0 + float(s["w"].abs().sum())} if proxy else {}
            rule([(s, 1.0) for s in states], **extra)
        if partition is not None:
            partition(states, [start] * len(states))
    except ValueError as e:
        raise FedpeftError(f"`server.aggregator_options` of {name!r}: {e}") from None


def _optimizer(cfg: ServerConfig) -> ServerOptimizer | None:
    lr = {} if cfg.server_lr is None else {"server_lr": cfg.server_lr}
    try:
        if cfg.optimizer == "fedavgm":
            return FedAvgM(momentum=cfg.momentum, **lr)
        if cfg.optimizer == "fedadam":
            return FedAdam(beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau, **lr)
        if cfg.optimizer == "fedyogi":
            return FedYogi(beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau, **lr)
    except ValueError as e:
        raise FedpeftError(f"`server.{cfg.optimizer}`: {e}") from None
    return None
