"""Decoded image arrays cached as ``.npy`` files (``FEDPEFT_CACHE_DIR``), shared by the
image datasets and the image–text pairs; kept apart from both so neither imports the other."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedpeft.data.sources import ImageArrays


def cache_dir() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE_DIR", Path.home() / ".cache" / "fedpeft"))


def cached_arrays(key: str, build: Callable[[], ImageArrays]) -> ImageArrays:
    """``build()``'s arrays, stored once as two ``.npy`` files (written atomically)."""
    folder = cache_dir() / "images"
    paths = [folder / f"{key}.{part}.npy" for part in ("images", "labels")]
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
    return arrays
