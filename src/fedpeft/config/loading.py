"""TOML loading, ``--set a.b=c`` overrides, and validation errors people can read."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedpeft.config.schema import ExperimentConfig
from fedpeft.errors import FedpeftError


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Reads a TOML file (or nothing: the embedded default), applies overrides, validates."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(Path(path))
    for item in overrides or []:
        apply_override(raw, item)
    return build_config(raw, source=f"config {path}" if path else "config")


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FedpeftError(f"config file {path} does not exist; pass an existing TOML file.")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FedpeftError(f"config file {path} is not valid TOML: {e}.") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies ``section.key=value`` in place; the value is parsed as TOML, else a string."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise FedpeftError(f"--set expects section.key=value, got {item!r}.")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise FedpeftError(f"--set {key}: `{p}` is a value, not a section.")
        node = child
    node[parts[-1]] = value


def build_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise FedpeftError(f"{source}: {describe_validation_error(e)}") from None


def describe_validation_error(e: ValidationError, prefix: str = "", model: Any = None) -> str:
    """One sentence for the first problem: the field, what was expected, what was found."""
    err = e.errors()[0]
    field = ".".join([prefix, *map(str, err["loc"])] if prefix else map(str, err["loc"]))
    field = field or "(top level)"
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, err["loc"])
        return f"unknown key `{field}`; valid keys here: {valid}."
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" ({e.error_count()} problems in total)" if e.error_count() > 1 else ""
    if err["type"] == "value_error":  # a cross-field rule: its message says it all
        return f"{msg}{extra}."
    return f"`{field}`: {msg}, got {found!r}{extra}."


def _valid_keys(model: Any, loc: tuple[int | str, ...]) -> str:
    """The field names of the (sub-)model that rejected an unknown key at ``loc``."""
    if model is None:
        from fedpeft.config.schema import ExperimentConfig

        model = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
            return "see README.md"
        model = annotation
    return ", ".join(model.model_fields) or "none"


def config_to_toml(cfg: ExperimentConfig) -> str:
    """The resolved configuration as TOML (``None`` values are left out, as TOML has none)."""
    return tomli_w.dumps(cfg.model_dump(exclude_none=True))


# What a resumed run may change without changing its results' meaning: the planned length,
# where its folder lives and how the host runs it.
_UNFINGERPRINTED = {
    "run": (
        "rounds",
        "output_dir",
        "name",
        "threads",
        "device",
        "workers",
        "clients_per_pass",
        "compile",
        "frozen_bf16",  # bit-equal results either way
    ),
    "eval": ("every",),
}


# Keys added after runs were already checkpointed, with the default that reproduces the
# behaviour before them: at that default they are left out of the fingerprint, so a run
# made before the key existed still resumes, predicts and reports (its checkpoint's
# fingerprint was computed without it). Set to anything else, they count as every key does.
ADDED_LATER: dict[tuple[str, str], object] = {
    ("data", "image_column"): "image",  # 2026-12-06: custom images in a table
}


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """sha256 of the resolved configuration minus ``_UNFINGERPRINTED`` (and ``ADDED_LATER``
    keys at their default): a checkpoint written under another seed, learning rate, model or
    data has another fingerprint."""
    raw = cfg.model_dump(mode="json")
    for section, keys in _UNFINGERPRINTED.items():
        for key in keys:
            raw[section].pop(key, None)
    for (section, key), default in ADDED_LATER.items():
        if raw[section].get(key, default) == default:
            raw[section].pop(key, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
