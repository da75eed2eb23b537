"""A PEFT configuration by value: a registered method and its validated options.

On the wire a ``TrainInstruction`` names the method and carries its options as JSON text
(``""`` and ``"{}"``: the run's own ``[peft]`` method); ``parse_method_ref`` is the one
place that text is parsed and validated. A ``MethodRef`` compares and hashes by its
canonical form — the method and the options that differ from the spec's defaults, as JSON
with sorted keys — so ``{"r": 8}`` and ``{}`` are the same LoRA, and a ref can key caches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedpeft.errors import FedpeftError
from fedpeft.peft.registry import parse_spec
from fedpeft.peft.spec import MethodSpec


@dataclass(frozen=True, eq=False)
class MethodRef:
    """A registered ``method`` and its validated ``spec``; ``MethodRef.of`` builds one."""

    method: str
    spec: MethodSpec

    @classmethod
    def of(cls, method: str, options: Mapping[str, Any] | None = None) -> MethodRef:
        """The ref of ``method`` with ``options``; errors name ``peft.<option>``."""
        return cls(method, parse_spec(method, dict(options or {})))

    @property
    def options(self) -> dict[str, Any]:
        """The options that differ from the method's defaults, in JSON types."""
        return self.spec.model_dump(mode="json", exclude_defaults=True)

    @property
    def options_json(self) -> str:
        """The canonical options text (sorted keys, no spaces): the wire form."""
        return json.dumps(self.options, sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.options_json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodRef) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"MethodRef({self.method!r}, {self.options_json})"

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "options": self.options}

    @classmethod
    def from_json(cls, raw: object) -> MethodRef:
        """A ref saved by ``to_json``, validated again (it may come from a file)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("method"), str):
            raise FedpeftError(
                f"a method reference must be an object with a `method` name, got {raw!r}."
            )
        options = raw.get("options", {})
        if not isinstance(options, Mapping):
            raise FedpeftError(f"the options of method {raw['method']!r} must be an object.")
        return cls.of(raw["method"], options)


def parse_method_ref(method: str, options: str, default: MethodRef | None = None) -> MethodRef:
    """The ref a wire instruction names: ``method`` with ``options`` (JSON object text).

    An empty ``method`` is the run's own configuration, ``default``. Unknown methods,
    text that is not a JSON object and invalid options raise ``FedpeftError``.
    """
    if not method:
        if default is None:
            raise FedpeftError("the instruction names no PEFT method and the run has no default.")
        return default
    try:
        raw = json.loads(options or "{}")
    except json.JSONDecodeError:
        raise FedpeftError(f"method options {options!r} are not JSON.") from None
    if not isinstance(raw, dict):
        raise FedpeftError(f"method options {options!r} are not a JSON object.")
    return MethodRef.of(method, raw)
