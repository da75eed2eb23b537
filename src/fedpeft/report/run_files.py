"""What a run's report reads from its folder, each file verified before it is used: a file
that is present but damaged (not JSON or TOML, the wrong shape, a number that is text) is
refused with one sentence naming it (``FedpeftError``), never a traceback and never a
report quietly missing a part. Files a run may lack (``config.toml`` of an old run,
``partitions.json``, ``lr_search.json``) leave their part out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedpeft.errors import FedpeftError
from fedpeft.files import DAMAGED, json_kind, read_json_object, read_jsonl_objects

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.toml"
PARTITIONS = "partitions.json"
LR_SEARCH = "lr_search.json"
CONFIG_TABLES = ("run", "model", "data", "peft", "client", "server")  # what the report shows


def read_summary(run_dir: Path, hint: str = DAMAGED) -> dict[str, Any]:
    """``summary.json``, an object; a folder without one is not a finished run."""
    path = run_dir / SUMMARY
    if not path.is_file():
        inside = sorted(p.parent for p in run_dir.glob(f"*/{SUMMARY}"))
        if len(inside) == 1:  # `fedpeft report runs/<key>` of an experiment: the run is in it
            raise FedpeftError(f"{run_dir} has no {SUMMARY}; its run folder is {inside[0]}.")
        if inside:
            names = ", ".join(p.name for p in inside[:3]) + (", …" if len(inside) > 3 else "")
            raise FedpeftError(
                f"{run_dir} has no {SUMMARY}; it holds {len(inside)} run folders ({names}): "
                "pass one of them."
            )
        raise FedpeftError(f"{run_dir} has no {SUMMARY}; is it a finished fedpeft run?")
    return read_json_object(path, hint)


def read_rounds(run_dir: Path, hint: str = DAMAGED) -> list[dict[str, Any]]:
    """``metrics.jsonl`` as a list of round records ([] when there is none yet); each must
    carry its round number."""
    path = run_dir / METRICS
    return read_jsonl_objects(path, hint, _round_problem) if path.is_file() else []


def _round_problem(record: dict[str, Any]) -> str | None:
    r = record.get("round")
    if isinstance(r, bool) or not isinstance(r, int):
        return f"has no round number (`round` is a {json_kind(r)})"
    return None


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.toml`` ({} when it has none), its tables checked to be tables."""
    from fedpeft.config import read_toml

    path = run_dir / CONFIG
    if not path.is_file():
        return {}
    cfg = read_toml(path)
    for name in CONFIG_TABLES:
        if not isinstance(cfg.get(name, {}), dict):
            raise FedpeftError(f"{path}: `{name}` is a value, not a table; {DAMAGED}.")
    return cfg


def read_partitions(run_dir: Path, hint: str = DAMAGED) -> dict[str, Any]:
    """``partitions.json`` ({} when there is none); its ``label_names`` a list of strings."""
    path = run_dir / PARTITIONS
    if not path.is_file():
        return {}
    raw = read_json_object(path, hint)
    names = raw.get("label_names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise FedpeftError(f"{path}: `label_names` is not a list of class names; {hint}.")
    return raw


def chosen_lr(run_dir: Path) -> float | None:
    """The learning rate the range test chose (``lr_search.json``; None without one)."""
    path = run_dir / LR_SEARCH
    if not path.is_file():
        return None
    lr = read_json_object(path).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
        raise FedpeftError(f"{path}: `lr` is not a number ({json_kind(lr)}); {DAMAGED}.")
    return float(lr)
