"""Real image files written the way people keep them, for the custom-image tests: a folder
of class subfolders or a table of paths; each class a distinct colour and stripe pattern,
each image its own size, PNG and JPEG mixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 220)}


def picture(cls: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A ``size`` = (width, height) image of ``cls``: its colour, its stripes (cat
    horizontal, dog vertical, fish none), mild seeded noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    pixels = np.empty((h, w, 3), dtype=np.float64)
    pixels[:] = COLOURS.get(cls, (128, 128, 128))  # another class: gray
    if cls == "cat":
        pixels[::4] *= 0.5
    elif cls == "dog":
        pixels[:, ::4] *= 0.5
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(root: Path, per_class: int, seed: int = 0, classes: tuple[str, ...] = ()) -> int:
    """``root/<class>/<i>.png|jpg``, ``per_class`` images a class of sizes 12–70 px; returns
    how many were written."""
    rng = np.random.default_rng(seed)
    count = 0
    for cls in classes or tuple(COLOURS):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(12, 70)), int(rng.integers(12, 70)))
            suffix = "png" if i % 2 else "jpg"
            picture(cls, size, seed * 1000 + count).save(root / cls / f"{i}.{suffix}")
            count += 1
    return count


def write_table(folder: Path, name: str, per_class: int, seed: int = 0) -> Path:
    """A CSV ``folder/name`` of ``image,label`` rows with paths relative to ``folder``
    (images under ``folder/pics/``)."""
    rng = np.random.default_rng(seed)
    (folder / "pics").mkdir(parents=True, exist_ok=True)
    rows = ["image,label"]
    for cls in COLOURS:
        for i in range(per_class):
            size = (int(rng.integers(12, 70)), int(rng.integers(12, 70)))
            rel = f"pics/{cls}-{seed}-{i}.png"
            picture(cls, size, seed * 1000 + len(rows)).save(folder / rel)
            rows.append(f"{rel},{cls}")
    path = folder / name
    path.write_text("\n".join(rows) + "\n")
    return path
