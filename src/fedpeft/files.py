"""Crash-safe files (run folders, checkpoints, client states): written whole or not at all,
and no temporaries left behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"  # a temporary is `.<final name>.tmp-<random>` beside its final file


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` so that ``path`` holds either the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
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
