"""PEFT method registry: a method name → its validated spec class.

A spec is a small frozen pydantic model. It applies itself to a model and — from the
model's ``Architecture`` alone, without building it — predicts its trainable parameter
count, its update size in bytes and the forward FLOPs it adds. Adding a method is one
``register_method`` call; allocation, aggregation and compression only ever see the
resulting ``AdapterState``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from fedpeft.config.loading import describe_validation_error
from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture

Kind = Literal["reparameterised", "additive", "selective", "baseline"]


class MethodSpec(BaseModel):
    """Base class of every method's options; subclasses add validated fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        """The model with only this method's parameters (and the task head) trainable."""
        raise NotImplementedError

    def trainable_params(self, arch: Architecture) -> int:
        raise NotImplementedError

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        """Forward FLOPs added for one example of ``seq_len`` tokens."""
        return 0

    def update_bytes(self, arch: Architecture, bytes_per_param: int = 4) -> int:
        """Raw tensor bytes of one update (float32 by default; the codec adds a header)."""
        return self.trainable_params(arch) * bytes_per_param


@dataclass(frozen=True)
class PeftMethod:
    name: str
    spec: type[MethodSpec]
    kind: Kind
    description: str
    causal_lm: bool = True  # also offered for causal LMs (instruction tuning)


_REGISTRY: dict[str, PeftMethod] = {}


def register_method(method: PeftMethod) -> None:
    if method.name in _REGISTRY:
        raise ValueError(f"PEFT method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method


def method_names(causal_lm: bool = False) -> list[str]:
    """Every registered method, or (``causal_lm``) those offered for causal LMs."""
    return sorted(n for n, m in _REGISTRY.items() if m.causal_lm or not causal_lm)


def get_method(name: str) -> PeftMethod:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`peft.method` is {name!r}, which is not a registered PEFT method; "
            f"expected one of: {', '.join(method_names())}."
        )
    return _REGISTRY[name]


def parse_spec(method: str, options: dict[str, Any]) -> MethodSpec:
    """The method's spec from the ``[peft]`` options; errors name ``peft.<option>``."""
    cls = get_method(method).spec
    try:
        return cls.model_validate(options)
    except ValidationError as e:
        message = describe_validation_error(e, prefix="peft", model=cls)
        raise FedpeftError(f"method {method!r}: {message}") from None


def head_params_trainable(model: nn.Module, arch: Architecture) -> None:
    """Freezes every parameter, then unfreezes the task head (in place) unless it is one
    that stays frozen (``head_params == 0``: a causal LM's output layer)."""
    for name, p in model.named_parameters():
        p.requires_grad_(arch.head_params > 0 and name.startswith(arch.head_prefix + "."))
