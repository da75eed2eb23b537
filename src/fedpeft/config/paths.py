"""Checks of the paths a config names, against this machine's file system, before a run
writes anything (``fedpeft run`` calls them; a Flower client does not, since
``run.output_dir`` is the server's), and of the input files a command is given."""

from __future__ import annotations

import os
from pathlib import Path

from fedpeft.errors import FedpeftError


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


def check_input_file(path: Path, what: str, hint: str) -> None:
    """Stops unless ``path`` is an existing file, naming a folder as one: ``what`` is the
    kind of file (``config file``), ``hint`` what to pass instead."""
    if path.is_dir():
        raise FedpeftError(f"{what} {path} is a folder, not a file; {hint}.")
    if not path.is_file():
        raise FedpeftError(f"{what} {path} does not exist; {hint}.")
