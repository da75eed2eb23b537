"""Decoded image arrays cached as ``.npy`` files (``FEDPEFT_CACHE_DIR``), shared by the
image datasets and the image–text pairs; kept apart from both so neither imports the other."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedpeft.data.sources import ImageArrays

log = logging.getLogger(__name__)

_PARTS = ("images", "labels")
_VERSION = 1  # of the .json record beside each entry
_warned = False  # an unwritable cache is reported once a process


def cache_dir() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE_DIR", Path.home() / ".cache" / "fedpeft"))


def cached_arrays(
    key: str, build: Callable[[], ImageArrays], replaces: str | None = None
) -> ImageArrays:
    """``build()``'s arrays, stored once as two ``.npy`` files (written atomically) and a
    ``.json`` record of each file's shape, dtype and SHA-256, written last. What is read
    back is verified against the record before it is trusted: a missing record, a file
    truncated, changed or of another shape is decoded again (``build``) and rewritten.

    ``replaces``: a prefix of ``key`` naming where the arrays come from (a folder, the
    split, the side); once this entry is written, the other entries under that prefix (the
    same source's earlier contents) are removed, so a changed folder leaves one entry.
    A cache folder that cannot be written (``FEDPEFT_CACHE_DIR`` under a file, read-only,
    a full disk) is warned about once and the arrays are returned uncached."""
    folder = cache_dir() / "images"
    paths = [folder / f"{key}.{part}.npy" for part in _PARTS]
    record = folder / f"{key}.json"
    stored = _verified(paths, record)
    if stored is not None:
        return stored
    arrays = build()
    try:
        _write(paths, record, arrays)
        if replaces is not None:
            _evict(folder, replaces, keep=key)
    except OSError as e:  # not a folder, read-only, full disk: the run goes on uncached
        _warn_once(folder, e)
    return arrays


def _verified(paths: list[Path], record: Path) -> ImageArrays | None:
    """The stored arrays when both files match their record (shape, dtype, SHA-256)."""
    try:
        facts = json.loads(record.read_text())
        if facts.get("version") != _VERSION:
            return None
        for path, part in zip(paths, _PARTS, strict=True):
            if _sha256(path) != facts[part]["sha256"]:
                return None
        images = np.load(paths[0], mmap_mode="r", allow_pickle=False)
        labels = np.load(paths[1], allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # missing, unreadable or damaged: rebuilt
    for value, part in zip((images, labels), _PARTS, strict=True):
        if list(value.shape) != facts[part]["shape"] or str(value.dtype) != facts[part]["dtype"]:
            return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        return None
    return ImageArrays(images, labels.astype(np.int64))


def _write(paths: list[Path], record: Path, arrays: ImageArrays) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    facts: dict[str, object] = {"version": _VERSION}
    for path, part, value in zip(paths, _PARTS, (arrays.images, arrays.labels), strict=True):
        value = np.asarray(value)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        try:
            np.save(tmp, value, allow_pickle=False)
            facts[part] = {
                "shape": list(value.shape),
                "dtype": str(value.dtype),
                "sha256": _sha256(tmp),
            }
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # a partial file left by a full disk
    tmp = record.with_suffix(f".tmp{os.getpid()}.json")
    try:
        tmp.write_text(json.dumps(facts))
        tmp.replace(record)  # last: a record names complete files
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _warn_once(folder: Path, e: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "cannot write the image cache in %s (%s); going on without it, decoding images on "
            "every run: set FEDPEFT_CACHE_DIR to a writable folder with room to keep them",
            folder,
            e.strerror or e,
        )


def _evict(folder: Path, prefix: str, keep: str) -> None:
    """Removes the entries whose key starts with ``prefix``, all but ``keep``."""
    assert keep.startswith(prefix)
    for path in folder.glob(f"{prefix}*"):
        if not path.name.startswith(f"{keep}.") and ".tmp" not in path.name:
            path.unlink(missing_ok=True)
