"""Pydantic validation errors as one sentence a person can act on."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# The longest shown value: a message never prints a whole input.
SHOWN_VALUE_CHARS = 80


def describe_validation_error(e: ValidationError, prefix: str = "", model: Any = None) -> str:
    """One sentence for the first problem: the field, what was expected, what was found.

    Missing and unknown keys of the first problem's table are named together (with the
    closest valid key for a near miss), not the first one plus a count."""
    errors = e.errors()
    err = errors[0]
    if err["type"] in ("missing", "extra_forbidden"):
        return _keys_message(errors, err["loc"][:-1], prefix, model)
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" ({e.error_count()} problems in total)" if e.error_count() > 1 else ""
    if err["type"] == "value_error":  # a cross-field rule: its message says it all
        return f"{msg}{extra}."
    field = _dotted(prefix, err["loc"]) or "(top level)"
    return f"`{field}`: {msg}, got {shown(err.get('input'))}{extra}."


def describe_toml_error(e: tomllib.TOMLDecodeError, text: str) -> str:
    """The parser's message, naming the key when it is one set twice in a table (the parser
    says only "Cannot overwrite a value" and where)."""
    message = str(e)
    at = re.search(r"at line (\d+), column \d+", message)
    lines = text.splitlines()
    if message.startswith("Cannot overwrite") and at and int(at.group(1)) <= len(lines):
        key = lines[int(at.group(1)) - 1].partition("=")[0].strip()
        if key:
            message += f"; `{key}` is already set above in the same table"
    return message


def shown(value: object) -> str:
    """``repr(value)``, cut to ``SHOWN_VALUE_CHARS`` characters."""
    text = repr(value)
    if len(text) <= SHOWN_VALUE_CHARS:
        return text
    return text[: SHOWN_VALUE_CHARS - 3] + "..."


def _dotted(prefix: str, loc: Sequence[int | str]) -> str:
    return ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))


def _keys_message(
    errors: list[ErrorDetails], parent: tuple[int | str, ...], prefix: str, model: Any
) -> str:
    """Every missing and unknown key of the table at ``parent``, in one sentence."""
    here = [x for x in errors if tuple(x["loc"][:-1]) == tuple(parent)]
    missing = [str(x["loc"][-1]) for x in here if x["type"] == "missing"]
    unknown = [str(x["loc"][-1]) for x in here if x["type"] == "extra_forbidden"]
    parts = []
    if missing:
        keys = _and([f"`{_dotted(prefix, (*parent, k))}`" for k in missing])
        plural = "s" if len(missing) > 1 else ""
        parts.append(f"missing required key{plural} {keys}")
    if unknown:
        parts.append(_unknown_keys(unknown, _field_names(model, parent), prefix, parent))
    others = len(errors) - len(missing) - len(unknown)
    tail = f" ({others} other problem{'s' if others > 1 else ''})" if others else ""
    text = "; ".join(parts) + tail
    return text if text.endswith("?") else text + "."


def _unknown_keys(
    unknown: list[str], valid: list[str] | None, prefix: str, parent: tuple[int | str, ...]
) -> str:
    """``unknown key `a.b`; did you mean `a.c`?`` (or the valid keys when nothing is close)."""
    named, far = [], False
    for key in unknown:
        close = difflib.get_close_matches(key, valid or [], n=1)
        guess = f" (did you mean `{_dotted(prefix, (*parent, close[0]))}`?)" if close else ""
        far = far or not close
        named.append(f"`{_dotted(prefix, (*parent, key))}`{guess}")
    text = f"unknown key{'s' if len(unknown) > 1 else ''} {_and(named)}"
    if len(unknown) == 1 and not far:  # one near miss: the suggestion is the sentence
        text = text.replace(" (did you mean ", "; did you mean ").removesuffix(")")
    if far:
        listed = "see README.md" if valid is None else ", ".join(valid) or "none"
        text += f"; valid keys here: {listed}"
    return text


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _field_names(model: Any, parent: Sequence[int | str]) -> list[str] | None:
    """The field names of the (sub-)model at ``parent``; None where that is not a model."""
    if model is None:
        from fedpeft.config.schema import ExperimentConfig

        model = ExperimentConfig
    for part in parent:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
            return None
        model = annotation
    return list(model.model_fields)
