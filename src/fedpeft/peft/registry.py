"""PEFT method registry: a method name → how to apply it to a frozen model.

Issue #3 adds more methods; each is one ``register_method`` call, and everything else
(allocation, aggregation, compression) sees only the resulting ``AdapterState``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peft import PeftModel
from transformers import PreTrainedModel

from fedpeft.config import PeftConfig
from fedpeft.errors import FedpeftError

ApplyFn = Callable[[PreTrainedModel, PeftConfig], PeftModel]


@dataclass(frozen=True)
class PeftMethod:
    name: str
    apply: ApplyFn
    description: str


_REGISTRY: dict[str, PeftMethod] = {}


def register_method(method: PeftMethod) -> None:
    if method.name in _REGISTRY:
        raise ValueError(f"PEFT method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> PeftMethod:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`peft.method` is {name!r}, which is not a registered PEFT method; "
            f"expected one of: {', '.join(method_names())}."
        )
    return _REGISTRY[name]


def apply_peft(model: PreTrainedModel, cfg: PeftConfig) -> PeftModel:
    """Wraps ``model`` with the configured method; only the method's parameters train."""
    return get_method(cfg.method).apply(model, cfg)
