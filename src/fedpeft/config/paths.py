"""Checks of the paths a config names, against this machine's file system, before a run
writes anything (``fedpeft run`` calls them; a Flower client does not, since
``run.output_dir`` is the server's), and of the input files a command is given."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.config.schema import ExperimentConfig


def check_output_dir(output_dir: str, setting: str = "`run.output_dir`") -> None:
    """``run.output_dir`` (or the folder ``setting`` names) must be a writable folder or
    creatable as one: not a file, not below a file, not in a folder this process cannot
    write."""
    path = Path(output_dir)  # as RunStore.create takes it (the config expanded any ~)
    probe = path
    while not probe.exists():  # the nearest existing ancestor (the root always exists)
        if probe.is_symlink():
            raise FedpeftError(
                f"{setting} {output_dir!r} goes through {probe}, a broken link; "
                "point it at a folder."
            )
        probe = probe.parent
    if not probe.is_dir():
        where = "is" if probe == path else f"lies below {probe}, which is"
        raise FedpeftError(
            f"{setting} {output_dir!r} {where} a file, not a folder; "
            "point it at a folder (it is created if missing)."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FedpeftError(
            f"{setting} {output_dir!r}: {probe} is not writable by this user; "
            "point it at a folder you can write."
        )


def check_report_folder(folder: Path) -> None:
    """``folder`` is a folder and, with its ``plots/``, where a report is written, can be
    written by this user (a read-only archive of a run or an experiment ended in a
    PermissionError)."""
    if not folder.is_dir():
        raise FedpeftError(
            f"{folder} is not a folder; pass a run folder (runs/<run-id>) or an "
            "experiment folder (experiments/<name>)."
        )
    for path in (folder, folder / "plots"):
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise FedpeftError(
                f"{path} is not writable by this user, and the report is written there; "
                "make it writable (chmod -R u+w) or report on a copy of the folder."
            )


def check_input_file(path: Path, what: str, hint: str) -> None:
    """Stops unless ``path`` is an existing file, naming a folder as one: ``what`` is the
    kind of file (``config file``), ``hint`` what to pass instead."""
    if path.is_dir():
        raise FedpeftError(f"{what} {path} is a folder, not a file; {hint}.")
    if not path.is_file():
        raise FedpeftError(f"{what} {path} does not exist; {hint}.")


INPUT_KEYS = ("data.train_file", "data.eval_file", "profiles.file", "peft.init_from")


def absolute_inputs(cfg: ExperimentConfig, only: Collection[str] = INPUT_KEYS) -> ExperimentConfig:
    """``cfg`` with its relative input paths (``only`` those of these keys, of
    ``INPUT_KEYS``) made absolute against the current folder, where they were given: a run
    stores them so in its ``config.toml``, and a resume from another folder, or of a run
    folder moved elsewhere, reads the same files."""
    paths = {k: os.path.abspath(v) for k, v in input_paths(cfg).items() if k in only}
    data = {k.partition(".")[2]: v for k, v in paths.items() if k.startswith("data.")}
    peft = {"init_from": paths["peft.init_from"]} if "peft.init_from" in paths else {}
    profiles = {"file": paths["profiles.file"]} if "profiles.file" in paths else {}
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update=data),
            "peft": cfg.peft.model_copy(update=peft),
            "profiles": cfg.profiles.model_copy(update=profiles),
        }
    )


def input_paths(cfg: ExperimentConfig) -> dict[str, str]:
    """The input files ``cfg`` names, by key (``data.train_file``, ``data.eval_file``,
    ``profiles.file``, ``peft.init_from``): the keys a resume may point elsewhere."""
    given = {f"data.{k}": getattr(cfg.data, k) for k in _DATA_INPUTS}
    given |= {
        "profiles.file": cfg.profiles.file,
        "peft.init_from": cfg.peft.options.get("init_from"),
    }
    return {key: path for key, path in given.items() if isinstance(path, str) and path}


def relative_inputs(cfg: ExperimentConfig) -> list[str]:
    """The input settings of ``cfg`` that hold a relative path (a run started before they
    were stored absolute), each as ```key` 'path'``."""
    return [
        f"`{key}` {path!r}"
        for key, path in input_paths(cfg).items()
        if not Path(path).is_absolute()
    ]


def check_resumed_inputs(cfg: ExperimentConfig, source: Path) -> None:
    """Every input file a resumed run names is there; one that is not (a project moved with
    its data) is named with the way to point the run at its new place."""
    for key, path in input_paths(cfg).items():
        if not Path(path).exists():
            raise FedpeftError(
                f"`{key}` {path} (from {source}) does not exist; if it moved, give its new "
                f"place with `--set {key}='…'` beside `--resume`."
            )


_DATA_INPUTS = ("train_file", "eval_file")
