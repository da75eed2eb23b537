"""Server optimisers: the aggregate becomes a pseudo-gradient ``Δ = θ_agg − θ`` that the server
applies with momentum or an adaptive step (Reddi et al., 2021, "Adaptive Federated Optimization",
ICLR).

Each optimiser is a frozen dataclass of hyperparameters, checked when it is built, whose call is
a pure function ``(θ, θ_agg, state) → (θ', state')``. ``state`` is a flat ``dict[str, Tensor]``
(keys ``"m/<key>"``, ``"v/<key>"``) so it checkpoints with safetensors; the first round passes
``{}``. Computation is in float64; θ' keeps θ's dtypes and the state is at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fedpeft.aggregation.compat import check_states
from fedpeft.types import AdapterState

ServerOptimizer = Callable[
    [AdapterState, AdapterState, AdapterState], tuple[AdapterState, AdapterState]
]


@dataclass(frozen=True)
class FedAvgM:
    """FedAvgM (Hsu et al., 2019, arXiv:1909.06335): ``m ← β m + Δ``;  ``θ ← θ + η m``.

    ``η = 1, β = 0`` is FedAvg: θ' is the aggregate.
    """

    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr)
        _unit_interval("momentum", self.momentum)

    def __call__(
        self, global_state: AdapterState, aggregated: AdapterState, opt_state: AdapterState
    ) -> tuple[AdapterState, AdapterState]:
        grads = _pseudo_gradient(global_state, aggregated)
        _known_keys(opt_state, grads, ("m",))
        new_global: AdapterState = {}
        new_state: AdapterState = {}
        for key, delta in grads.items():
            m = self.momentum * _buffer(opt_state, "m", key, delta, 0.0) + delta
            new_global[key] = _apply(global_state[key], self.server_lr * m)
            new_state[f"m/{key}"] = _store(m, global_state[key])
        return new_global, new_state


@dataclass(frozen=True)
class FedAdam:
    """FedAdam (Reddi et al., 2021, Alg. 2): ``m ← β₁ m + (1 − β₁) Δ``;
    ``v ← β₂ v + (1 − β₂) Δ²``;  ``θ ← θ + η m / (√v + τ)``.

    No bias correction, as in the paper; ``m`` starts at 0 and ``v`` at ``τ²`` (the paper asks
    ``v₋₁ ≥ τ²``). Defaults are the paper's β₁, β₂; tune ``server_lr`` and ``tau``.
    """

    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_adaptive(self.server_lr, self.beta1, self.beta2, self.tau)

    yogi: ClassVar[bool] = False  # FedYogi sets True; hyperparameters are shared

    def __call__(
        self, global_state: AdapterState, aggregated: AdapterState, opt_state: AdapterState
    ) -> tuple[AdapterState, AdapterState]:
        return _adaptive_step(self, global_state, aggregated, opt_state, yogi=self.yogi)


@dataclass(frozen=True)
class FedYogi(FedAdam):
    """FedYogi (Reddi et al., 2021, Alg. 2): as FedAdam, but
    ``v ← v − (1 − β₂) Δ² sign(v − Δ²)``, so v grows or shrinks by at most ``(1 − β₂) Δ²``.
    """

    yogi = True


def _adaptive_step(
    hp: FedAdam,
    global_state: AdapterState,
    aggregated: AdapterState,
    opt_state: AdapterState,
    *,
    yogi: bool,
) -> tuple[AdapterState, AdapterState]:
    grads = _pseudo_gradient(global_state, aggregated)
    _known_keys(opt_state, grads, ("m", "v"))
    new_global: AdapterState = {}
    new_state: AdapterState = {}
    for key, delta in grads.items():
        m = hp.beta1 * _buffer(opt_state, "m", key, delta, 0.0) + (1 - hp.beta1) * delta
        v = _buffer(opt_state, "v", key, delta, hp.tau**2)
        sq = delta**2
        if yogi:
            v = v - (1 - hp.beta2) * sq * torch.sign(v - sq)
        else:
            v = hp.beta2 * v + (1 - hp.beta2) * sq
        new_global[key] = _apply(global_state[key], hp.server_lr * m / (v.sqrt() + hp.tau))
        new_state[f"m/{key}"] = _store(m, global_state[key])
        new_state[f"v/{key}"] = _store(v, global_state[key])
    return new_global, new_state


def _pseudo_gradient(global_state: AdapterState, aggregated: AdapterState) -> dict[str, Tensor]:
    """``Δ = θ_agg − θ`` per key, in float64, after checking keys and shapes agree."""
    check_states([aggregated], "the server optimiser", reference=global_state, what="aggregate")
    return {
        key: aggregated[key].to(torch.float64) - value.to(torch.float64)
        for key, value in global_state.items()
    }


def _known_keys(opt_state: AdapterState, grads: dict[str, Tensor], slots: tuple[str, ...]) -> None:
    expected = {f"{slot}/{key}" for slot in slots for key in grads}
    unknown = sorted(opt_state.keys() - expected)
    if unknown:
        raise ValueError(
            f"the server optimiser state has {unknown[0]!r}, which this optimiser does not use; "
            "start from {} or load the state this optimiser saved"
        )


def _buffer(opt_state: AdapterState, slot: str, key: str, like: Tensor, init: float) -> Tensor:
    name = f"{slot}/{key}"
    if name not in opt_state:
        return torch.full_like(like, init)
    if opt_state[name].shape != like.shape:
        raise ValueError(
            f"server optimiser state {name!r} is {tuple(opt_state[name].shape)}, "
            f"expected {tuple(like.shape)}"
        )
    return opt_state[name].to(torch.float64)


def _apply(param: Tensor, step: Tensor) -> Tensor:
    return (param.to(torch.float64) + step).to(param.dtype)


def _store(buffer: Tensor, param: Tensor) -> Tensor:
    return buffer.to(torch.promote_types(param.dtype, torch.float32))


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` should be positive, got {value}.")


def _unit_interval(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` should be in [0, 1), got {value}.")


def _check_adaptive(server_lr: float, beta1: float, beta2: float, tau: float) -> None:
    _positive("server_lr", server_lr)
    _unit_interval("beta1", beta1)
    _unit_interval("beta2", beta2)
    _positive("tau", tau)
