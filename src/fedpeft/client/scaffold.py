"""SCAFFOLD's client half (Karimireddy et al., 2020, Alg. 1, lines 8–12): every local step
uses the corrected gradient ``g_i(y) − c_i + c``, and the client returns its new control
``c_i⁺`` and ``Δc_i = c_i⁺ − c_i`` beside its model update. The server half (``c`` and the
update of ``c``) is ``fedpeft.aggregation.drift``; the server keeps ``c`` and every ``c_i``.

``c_i⁺`` is option I of the paper, ``∇f_i``, estimated as the mean of the raw mini-batch
gradients the client computed along its local path (no extra pass over the data). Option
II, ``c_i − c + (x − y)/(K η_l)``, measures the gradient through the step size of plain
SGD; the local optimiser here is AdamW, whose steps are normalised, so it would not.

On the wire (``server.aggregator = "scaffold"``; ``scaffold_round`` is what ``handle_fit``
runs): the payload carries ``c`` as ``x/scaffold/c/<key>`` beside the adapter, the client
keeps ``c_i`` in its state as ``scaffold/c_i/<key>`` (zeros before its first round) and
replies with ``Δc_i`` as ``x/scaffold/dc/<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn

from fedpeft.aggregation.drift import zeros_like_state
from fedpeft.client.train import ClientData, train
from fedpeft.errors import FedpeftError
from fedpeft.peft.state import adapter_parameters
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction

SCAFFOLD = "scaffold"  # TrainInstruction.objective (and the aggregator's name)
CONTROL = "x/scaffold/c/"  # the payload's server control c
DELTA = "x/scaffold/dc/"  # the reply's Δc_i
LOCAL = "scaffold/c_i/"  # the client's kept control c_i
V = TypeVar("V")


def with_prefix(state: AdapterState, prefix: str) -> AdapterState:
    """``state`` with every key prefixed (e.g. as payload extras)."""
    return {prefix + k: v for k, v in state.items()}


def under_prefix(state: AdapterState, prefix: str) -> AdapterState:
    """The tensors of ``state`` whose key starts with ``prefix``, prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def reply_names(served: Mapping[str, V]) -> dict[str, V]:
    """What a reply to a payload holding ``served`` carries, by name: the adapter's tensors
    as sent, and ``Δc_i`` in place of ``c`` (same dtype and shape; for a transport that checks
    a reply's layout before decoding it)."""
    return {
        (DELTA + k[len(CONTROL) :] if k.startswith(CONTROL) else k): v for k, v in served.items()
    }


def corrected_gradient(
    grad: torch.Tensor, server: torch.Tensor, local: torch.Tensor
) -> torch.Tensor:
    """``g − c_i + c``: the SCAFFOLD client's drift-corrected gradient."""
    return grad - local.to(grad.dtype) + server.to(grad.dtype)


def control_delta(new: AdapterState, old: AdapterState) -> AdapterState:
    """``Δc_i = c_i⁺ − c_i`` (what the client sends besides its model update)."""
    if new.keys() != old.keys():
        raise ValueError(f"controls differ in key {sorted(new.keys() ^ old.keys())[0]!r}")
    return {k: (new[k].double() - old[k].double()).to(torch.float32) for k in new}


@dataclass(frozen=True)
class ScaffoldReply:
    update: ClientUpdate
    local_control: AdapterState  # c_i⁺
    control_delta: AdapterState  # Δc_i = c_i⁺ − c_i


def train_scaffold(
    model: nn.Module,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    control: AdapterState,
    local_control: AdapterState,
) -> ScaffoldReply:
    """``train`` with SCAFFOLD's corrected gradients; ``control`` is the server's ``c``,
    ``local_control`` this client's ``c_i`` (zeros the first time), both keyed like the
    adapter state."""
    params = adapter_parameters(model)
    for name, state in (("control", control), ("local_control", local_control)):
        if state.keys() != params.keys():
            odd = sorted(state.keys() ^ params.keys())[0]
            raise ValueError(f"`{name}` does not fit the adapter: key {odd!r}")
    c = {k: v.to(device) for k, v in control.items()}
    c_i = {k: v.to(device) for k, v in local_control.items()}
    sums = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    steps = 0

    def correct() -> None:
        nonlocal steps
        steps += 1
        for key, p in params.items():
            if p.grad is None:
                continue
            sums[key] += p.grad.detach().double()
            p.grad.copy_(corrected_gradient(p.grad, c[key], c_i[key]))

    update = train(model, instruction, data, device, after_backward=correct)
    new_local = {k: (s / max(steps, 1)).float().cpu() for k, s in sums.items()}
    old_local = {k: v.float().cpu() for k, v in local_control.items()}
    return ScaffoldReply(update, new_local, control_delta(new_local, old_local))


def scaffold_round(
    model: nn.Module,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    extras: AdapterState,
    kept: AdapterState,
) -> tuple[ClientUpdate, AdapterState]:
    """One SCAFFOLD round on a client: ``c`` from the payload's extras, ``c_i`` from its kept
    state (zeros the first time); the update carries ``Δc_i`` as extras, and the kept state
    returned holds ``c_i⁺`` (the rest of ``kept`` unchanged)."""
    control = under_prefix(extras, CONTROL)
    if not control:
        raise FedpeftError(
            "a SCAFFOLD instruction came without the server's control variate "
            f"(`{CONTROL}…` tensors in the payload)."
        )
    local = under_prefix(kept, LOCAL) or zeros_like_state(control)
    reply = train_scaffold(model, instruction, data, device, control, local)
    update = replace(reply.update, extras=with_prefix(reply.control_delta, DELTA))
    others = {k: v for k, v in kept.items() if not k.startswith(LOCAL)}
    return update, others | with_prefix(reply.local_control, LOCAL)
