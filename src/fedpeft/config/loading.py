"""TOML loading, ``--set a.b=c`` overrides, and validation errors people can read."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedpeft.config.messages import describe_toml_error
from fedpeft.config.messages import describe_validation_error as describe_validation_error
from fedpeft.config.paths import INPUT_KEYS, check_input_file
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
    return build_config(raw, source=f"config {path}" if path else "config", overrides=overrides)


def read_toml(path: Path) -> dict[str, Any]:
    check_input_file(path, "config file", "pass an existing TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FedpeftError(f"config file {path} is not valid TOML: {e}.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FedpeftError(
            f"config file {path} is not valid TOML: {describe_toml_error(e, text)}."
        ) from None
    except RecursionError:
        raise FedpeftError(
            f"config file {path} is not valid TOML: it nests arrays or tables too deeply."
        ) from None


@dataclass(frozen=True)
class Override:
    """One ``--set section.key=value``: the key's parts and the value read from the text."""

    item: str
    parts: tuple[str, ...]
    value: Any
    not_toml: str | None  # why the text is not a TOML value (then ``value`` is the text)


def parse_override(item: str) -> Override:
    """``section.key=value`` → ``Override``; the value is parsed as TOML, else a string."""
    key, sep, text = item.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or len(parts) < 2 or not all(parts):
        raise FedpeftError(f"--set expects section.key=value, got {item!r}.")
    try:
        return Override(item, parts, tomllib.loads(f"v = {text.strip()}")["v"], None)
    except tomllib.TOMLDecodeError as e:
        reason = re.sub(r" \(at line \d+, column \d+\)", "", str(e))
        return Override(item, parts, text.strip(), reason)
    except RecursionError:
        return Override(item, parts, text.strip(), "it nests arrays or tables too deeply")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies ``section.key=value`` in place; the value is parsed as TOML, else a string."""
    override = parse_override(item)
    node = raw
    for p in override.parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise FedpeftError(
                f"--set {'.'.join(override.parts)}: `{p}` is a value, not a section."
            )
        node = child
    node[override.parts[-1]] = override.value


def build_config(
    raw: dict[str, Any], source: str = "config", overrides: Sequence[str] | None = None
) -> ExperimentConfig:
    """Validates ``raw``; ``overrides`` (the ``--set`` items already applied to it) name the
    culprit when the bad value came from one of them rather than from ``source``."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        message = describe_validation_error(e)
        raise FedpeftError(_blame(e, message, source, overrides or [])) from None


# Pydantic error types of a value that should have been a list or a table.
_CONTAINER_ERRORS = {"list_type", "dict_type", "model_type", "model_attributes_type"}


def _blame(e: ValidationError, message: str, source: str, overrides: Sequence[str]) -> str:
    """``message`` prefixed by where the bad value came from: the last ``--set`` of the
    field (saying when its text was not TOML and so was read as a string), else ``source``."""
    err = e.errors()[0]
    loc = tuple(map(str, err["loc"]))
    parsed = [parse_override(item) for item in overrides]
    for o in reversed(parsed):
        if loc[: len(o.parts)] == o.parts:
            if o.not_toml and err["type"] in _CONTAINER_ERRORS:
                message = (
                    f"{message.removesuffix('.')}; the value did not parse as TOML "
                    f"({o.not_toml}), so it was read as a string."
                )
            return f"--set {o.item}: {message}"
    touched = [o.item for o in parsed if o.parts[: len(loc)] == loc]
    if touched:  # a rule over a section that a --set changed
        source += f" with --set {', '.join(touched)}"
    return f"{source}: {message}"


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


# Where a run's input files lie (not what they hold, which no fingerprint covers): a project
# moved with its data resumes with `--set data.train_file=…` beside `--resume`. Whether one
# is given still counts (an eval file added mid-run is another evaluation).
_INPUT_PATHS = [key.split(".") for key in INPUT_KEYS]
_GIVEN = "<an input file>"


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """sha256 of the resolved configuration minus ``_UNFINGERPRINTED``, with each input
    file's path replaced by the mark that one is given (and ``ADDED_LATER`` keys at their
    default): a checkpoint written under another seed, learning rate, model or data has
    another fingerprint. A config naming no input file has the fingerprint it had before
    paths were left out."""
    return _fingerprint(cfg, with_paths=False)


def accepted_fingerprints(
    cfg: ExperimentConfig, stored: ExperimentConfig | None = None
) -> tuple[str, ...]:
    """The fingerprints a checkpoint of ``cfg`` may carry: ``config_fingerprint``'s, and the
    one checkpoints written before 2026-12-07 carry (the input paths included) — of ``cfg``
    and, where a resume gave a moved file's new place, of the run's ``stored`` config."""
    old = [_fingerprint(c, with_paths=True) for c in (cfg, stored) if c is not None]
    return (config_fingerprint(cfg), *old)


def _fingerprint(cfg: ExperimentConfig, with_paths: bool) -> str:
    raw = cfg.model_dump(mode="json")
    for section, keys in _UNFINGERPRINTED.items():
        for key in keys:
            raw[section].pop(key, None)
    for section, key in _INPUT_PATHS:
        if not with_paths and raw[section].get(key) is not None:
            raw[section][key] = _GIVEN
    for (section, key), default in ADDED_LATER.items():
        if raw[section].get(key, default) == default:
            raw[section].pop(key, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
