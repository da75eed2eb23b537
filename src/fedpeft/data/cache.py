"""Decoded image arrays cached as ``.npy`` files (``FEDPEFT_CACHE_DIR``), shared by the
image datasets and the image–text pairs; kept apart from both so neither imports the other."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedpeft.data.sources import ImageArrays

_PARTS = ("images", "labels")


def cache_dir() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE_DIR", Path.home() / ".cache" / "fedpeft"))


def cached_arrays(
    key: str, build: Callable[[], ImageArrays], replaces: str | None = None
) -> ImageArrays:
    """``build()``'s arrays, stored once as two ``.npy`` files (written atomically).

    ``replaces``: a prefix of ``key`` naming where the arrays come from (a folder, the
    split, the side); once this entry is written, the other entries under that prefix (the
    same source's earlier contents) are removed, so a changed folder leaves one entry."""
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
    folder.mkdir(parents=True, exist_ok=True)
    for path, value in zip(paths, (arrays.images, arrays.labels), strict=True):
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, value, allow_pickle=False)
        tmp.replace(path)
    if replaces is not None:
        _evict(folder, replaces, keep=key)
    return arrays


def _evict(folder: Path, prefix: str, keep: str) -> None:
    """Removes the entries whose key starts with ``prefix``, all but ``keep``."""
    assert keep.startswith(prefix)
    for path in folder.glob(f"{prefix}*"):
        if not path.name.startswith(f"{keep}.") and ".tmp" not in path.name:
            path.unlink(missing_ok=True)
