"""Crash-safe files (run folders, checkpoints, client states): written whole or not at all,
and no temporaries left behind; read back verified (``read_json_object``,
``read_jsonl_objects``): a damaged file is one sentence that names it, never a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpeft.errors import FedpeftError

TMP_MARK = ".tmp-"  # a temporary is `.<final name>.tmp-<random>` beside its final file


def _umask() -> int:
    """The process's umask, read once (setting it back at once; imports run before threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600; a finished file gets the mode open() would give it (0644 under the
# usual umask), so a run folder's files are as readable as its other files and folders
FILE_MODE = 0o666 & ~_umask()
# a client's kept states (personal modules, SCAFFOLD's c_i), learnt from its private data
# and never sent: owner-only, as mkstemp made every file
PRIVATE_MODE = 0o600


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Writes ``data`` so that ``path`` holds either the old or the new content, never half;
    the file gets ``mode`` (``PRIVATE_MODE`` for what only its owner may read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)  # by name: Python 3.11 has no os.fchmod on Windows
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_temporaries(folder: Path) -> list[str]:
    """Deletes what a process killed inside ``write_atomic`` left in ``folder``; their
    names."""
    if not folder.is_dir():
        return []
    gone = []
    for path in folder.iterdir():
        if path.name.startswith(".") and TMP_MARK in path.name and path.is_file():
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


DAMAGED = "the run folder is damaged"  # the default advice when a run's own file is bad


def read_json_object(path: Path, hint: str = DAMAGED) -> dict[str, Any]:
    """The JSON object in ``path``; a file that cannot be read, is empty, is not JSON or
    holds something other than an object is refused (``FedpeftError``): one sentence naming
    ``path`` and ending in ``hint``, what the user can do."""
    text = _read_text(path, hint)
    if not text.strip():
        raise FedpeftError(f"{path} is empty; {hint}.")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
        raise FedpeftError(f"{path} is not valid JSON; {hint}.") from None
    if not isinstance(value, dict):
        raise FedpeftError(f"{path} holds a JSON {json_kind(value)}, not an object; {hint}.")
    return value


def read_jsonl_objects(
    path: Path,
    hint: str = DAMAGED,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line (blank lines skipped); a line that is not
    JSON, not an object, or that ``check`` complains about (its complaint, e.g. "has no
    round number") is refused with one sentence naming the file, the line and ``hint``."""
    rows = []
    for i, line in enumerate(_read_text(path, hint).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise FedpeftError(f"{path}, line {i} is not valid JSON; {hint}.") from None
        why = (
            f"holds a JSON {json_kind(row)}, not an object"
            if not isinstance(row, dict)
            else (check(row) if check is not None else None)
        )
        if why:
            raise FedpeftError(f"{path}, line {i} {why}; {hint}.")
        rows.append(row)
    return rows


def _read_text(path: Path, hint: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FedpeftError(f"{path} is not valid JSON (not UTF-8 text); {hint}.") from None
    except OSError as e:
        raise FedpeftError(f"{path} cannot be read ({e.strerror}); {hint}.") from None


def json_kind(value: Any) -> str:
    """What a JSON value is, in words: ``list``, ``string``, ``number``, ``object``…"""
    if isinstance(value, bool):
        return "boolean"
    kinds = ((dict, "object"), (list, "list"), (str, "string"), (int | float, "number"))
    return next((name for t, name in kinds if isinstance(value, t)), "null")
