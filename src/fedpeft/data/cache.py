"""Decoded image arrays cached as ``.npy`` files (``FEDPEFT_CACHE_DIR``), shared by the
image datasets and the image–text pairs; kept apart from both so neither imports the other."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedpeft.data.sources import ImageArrays

log = logging.getLogger(__name__)

_PARTS = ("images", "labels")
_warned = False  # an unwritable cache is reported once a process


def cache_dir() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE_DIR", Path.home() / ".cache" / "fedpeft"))


def cached_arrays(
    key: str, build: Callable[[], ImageArrays], replaces: str | None = None
) -> ImageArrays:
    """``build()``'s arrays, stored once as two ``.npy`` files (written atomically).

    ``replaces``: a prefix of ``key`` naming where the arrays come from (a folder, the
    split, the side); once this entry is written, the other entries under that prefix (the
    same source's earlier contents) are removed, so a changed folder leaves one entry.
    A cache folder that cannot be written (``FEDPEFT_CACHE_DIR`` under a file, read-only,
    a full disk) is warned about once and the arrays are returned uncached."""
    folder = cache_dir() / "images"
    paths = [folder / f"{key}.{part}.npy" for part in _PARTS]
    if all(p.is_file() for p in paths):
        try:
            images = np.load(paths[0], mmap_mode="r", allow_pickle=False)
            labels = np.load(paths[1], allow_pickle=False)
            if images.dtype == np.uint8 and len(images) == len(labels):
                return ImageArrays(images, labels.astype(np.int64))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    arrays = build()
    try:
        _write(folder, paths, arrays)
        if replaces is not None:
            _evict(folder, replaces, keep=key)
    except OSError as e:  # not a folder, read-only, full disk: the run goes on uncached
        _warn_once(folder, e)
    return arrays


def _write(folder: Path, paths: list[Path], arrays: ImageArrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path, value in zip(paths, (arrays.images, arrays.labels), strict=True):
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        try:
            np.save(tmp, value, allow_pickle=False)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # a partial file left by a full disk


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
