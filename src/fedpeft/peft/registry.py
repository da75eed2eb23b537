"""PEFT method registry: a method name → its spec class (``spec.MethodSpec``).

Adding a method is one ``register_method`` call; everything fedpeft needs to know about
the method (where it applies, its costs, its gain prior, how it folds into a group
envelope) is on its spec class. Allocation, aggregation and compression only ever see the
resulting ``AdapterState``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fedpeft.config.loading import describe_validation_error
from fedpeft.errors import FedpeftError
from fedpeft.peft.spec import Kind, MethodSpec, Task


@dataclass(frozen=True)
class PeftMethod:
    """A registered method: its name and its spec class, whose facts it forwards."""

    name: str
    spec: type[MethodSpec]

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def causal_lm(self) -> bool:
        """Offered for causal LMs (instruction tuning)."""
        return "instruct" in self.spec.tasks


_REGISTRY: dict[str, PeftMethod] = {}


def register_method(name: str, spec: type[MethodSpec]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"PEFT method {name!r} is registered twice")
    _REGISTRY[name] = PeftMethod(name, spec)


def method_names(causal_lm: bool = False) -> list[str]:
    """Every registered method, or (``causal_lm``) those offered for causal LMs."""
    return sorted(n for n, m in _REGISTRY.items() if m.causal_lm or not causal_lm)


def methods_for(task: Task) -> list[str]:
    """The registered methods offered for ``task`` ("classify", "instruct" or "qa")."""
    return sorted(n for n, m in _REGISTRY.items() if task in m.spec.tasks)


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
        hint = _unquoted_hint(e)
        if hint:
            message = f"{message.removesuffix('.')}; {hint}."
        raise FedpeftError(f"method {method!r}: {message}") from None


def _unquoted_hint(e: ValidationError) -> str:
    """A list or table that reached us as a string is most often a ``--set`` whose inner
    quotes the shell dropped (``peft.target_modules=['query','value']`` unquoted)."""
    err = e.errors()[0]
    found = err.get("input")
    if err["type"] not in ("list_type", "dict_type") or not isinstance(found, str):
        return ""
    if not found.strip().startswith(("[", "{")):
        return ""
    return (
        "it is text, not TOML (as when the shell drops the quotes inside a --set): "
        "quote the whole --set, e.g. --set \"peft.target_modules=['query','value']\""
    )
