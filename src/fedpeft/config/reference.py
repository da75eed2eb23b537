"""Every configuration key with its default, its accepted values and its meaning, read from
the schema itself, so the reference cannot drift from what ``fedpeft run`` accepts.

``docs/config.md`` is this module's output (``python -m fedpeft.config.reference >
docs/config.md``); a test keeps the committed page equal to it. pydantic's JSON schema
holds the same facts, but as JSON Schema: it loses which keys are TOML sub-tables
(``[allocation.gain]``) and spells ``PositiveInt | None`` as nested ``anyOf`` objects; a
person reading a TOML file wants one row per key.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fedpeft.config.schema import ExperimentConfig

HEADER = """# Configuration reference

Every key `fedpeft run` accepts, with its default; a config file holds only what differs
(`fedpeft run --config FILE.toml`, or `--set section.key=value`). `fedpeft config` prints a
configuration resolved and checked, without running it. Generated from the schema
(`python -m fedpeft.config.reference > docs/config.md`); `tests/test_config_reference.py`
keeps this page equal to it.

"""

_BOUNDS = ((at.Ge, "≥", "ge"), (at.Gt, ">", "gt"), (at.Le, "≤", "le"), (at.Lt, "<", "lt"))


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _bounds(metadata: list[Any]) -> str:
    """``annotated_types`` bounds as ``≥ 0, < 1``; length bounds as ``length ≥ 1``."""
    out = []
    for item in metadata:
        for kind, sign, attr in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, at.MinLen) and item.min_length:
            out.append(f"length ≥ {item.min_length}")
        if isinstance(item, at.MaxLen):
            out.append(f"length ≤ {item.max_length}")
        if isinstance(item, FieldInfo):  # Annotated[float, Field(gt=0)] inside a list
            out.append(_bounds(item.metadata))
        if isinstance(item, at.GroupedMetadata):  # e.g. at.Interval(gt=0, le=1)
            out.append(_bounds(list(item)))
    return ", ".join(o for o in out if o)


def type_text(tp: Any) -> str:
    """A type as a person reads it: ``"a" | "b"``, ``int > 0 | unset``, ``list of float``."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        bounds = _bounds(meta)
        return f"{type_text(base)} {bounds}".strip()
    if origin is Literal:
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in get_args(tp) if a is not type(None)]
        unset = " | unset" if type(None) in get_args(tp) else ""
        return " | ".join(parts) + unset
    if origin is list:
        return f"list of {type_text(get_args(tp)[0])}"
    if origin is dict:
        key, value = get_args(tp)
        return f"table of {type_text(key)} → {type_text(value)}"
    if _is_section(tp):
        return f"table ({tp.__name__})"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def field_type(info: FieldInfo) -> str:
    text = type_text(info.annotation)
    bounds = _bounds(info.metadata)
    if not bounds:
        return text
    return f"{text}, {bounds}" if bounds.startswith("length") or "|" in text else f"{text} {bounds}"


def default_text(info: FieldInfo) -> str:
    """The default written as TOML would have it; ``unset`` for None, ``—`` if required."""
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "— (required)"
    else:
        value = info.default
    return _toml_value(value)


def _toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, reStructuredText's ``code`` as Markdown's."""
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    inherited = {inspect.getdoc(BaseModel), inspect.getdoc(model.__mro__[1])}
    return "" if doc in inherited else _cell(doc).replace("\\|", "|")


def sections(
    model: type[BaseModel] = ExperimentConfig, prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel], list[tuple[str, FieldInfo]]]]:
    """``(table name, its model, its keys)`` for every TOML table, sub-tables after their
    parent; a key whose value is itself a section is its own table, not a row."""
    rows = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            nested.append((f"{prefix}.{name}" if prefix else name, sub))
        else:
            rows.append((name, info))
    if prefix:
        yield prefix, model, rows
    for name, sub in nested:
        yield from sections(sub, name)


def reference_markdown() -> str:
    out = [HEADER]
    for table, model, rows in sections():
        out.append(f"## `[{table}]`\n")
        if doc := _doc(model):
            out.append(f"{doc}\n")
        if rows:
            out.append("| key | default | accepted | meaning |\n| --- | --- | --- | --- |")
            for name, info in rows:
                out.append(
                    f"| `{name}` | `{_cell(default_text(info))}` | {_cell(field_type(info))} "
                    f"| {_cell(info.description or '')} |"
                )
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
