"""Checks of the paths a config names, against this machine's file system, before a run
writes anything (``fedpeft run`` calls them; a Flower client does not, since
``run.output_dir`` is the server's)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.config.schema import ExperimentConfig


def check_output_dir(output_dir: str) -> None:
    """``run.output_dir`` must be a writable folder or creatable as one: not a file, not
    below a file, not in a folder this process cannot write."""
    path = Path(output_dir)  # as RunStore.create takes it (the config expanded any ~)
    probe = path
    while not probe.exists():  # the nearest existing ancestor (the root always exists)
        if probe.is_symlink():
            raise FedpeftError(
                f"`run.output_dir` {output_dir!r} goes through {probe}, a broken link; "
                "point it at a folder."
            )
        probe = probe.parent
    if not probe.is_dir():
        where = "is" if probe == path else f"lies below {probe}, which is"
        raise FedpeftError(
            f"`run.output_dir` {output_dir!r} {where} a file, not a folder; "
            "point it at a folder (it is created if missing)."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FedpeftError(
            f"`run.output_dir` {output_dir!r}: {probe} is not writable by this user; "
            "point it at a folder you can write."
        )


def anchored(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its relative input files (``data.train_file``, ``data.eval_file``,
    ``profiles.file``) made absolute against the working folder, as a new run reads them:
    its ``config.toml`` then names the same files when the run is resumed, predicted with or
    reported from another folder. (``load_config`` keeps them relative: a config file or
    ``fedpeft config`` output stays portable.)"""

    def absolute(path: str | None) -> str | None:
        return path if path is None or os.path.isabs(path) else os.path.abspath(path)

    data = cfg.data.model_copy(
        update={
            "train_file": absolute(cfg.data.train_file),
            "eval_file": absolute(cfg.data.eval_file),
        }
    )
    profiles = cfg.profiles.model_copy(update={"file": absolute(cfg.profiles.file)})
    return cfg.model_copy(update={"data": data, "profiles": profiles})
