"""Bring-your-own images: ``data.dataset = "custom"`` read as images for an image model.

``data.train_file`` (and ``eval_file``) is a folder of class subfolders or a table of image
paths (``image_files``). A folder is always images; a table is read as the model reads
it: its ``data.image_column`` of paths for an image model, its ``data.text_column`` for a
text model (``registry._custom``). Classes and the held-out split are the text path's:
``data.label_names`` in that order, else the class names in ``label_order``; without an
eval file a seeded 10 % is held out (``held_out_tenth``).

Only the images a run uses are decoded: the held-out tenth and the seeded ``train_size``
and ``eval_size`` subsets are drawn on the file listing with ``load_dataset``'s very draws
(``drawn_indices``), so a 100,000-photo folder with ``train_size = 2000`` decodes about
2,000 images, the same ones in the same order as decoding all and subsetting would. Files
outside the subsets are never opened: one of them that does not decode goes unnoticed.
An audit's non-members (``heldout_train``) are decoded when asked for.

Each image is decoded once with PIL (EXIF orientation applied, any mode to RGB, a JPEG
decoded at a reduced scale where it is much larger) and resized straight to the model's
square input side with PIL's antialiased bilinear filter; the aspect ratio is not kept,
as the built-in image batches and ViT's own processor do. Memory is therefore
N × side² × 3 bytes for the N drawn, whatever the photos' size (20,000 images at 224 px:
3 GB), and the batches do no resizing. The decoded arrays are cached (``cached_arrays``, no pickle)
under a key made of every file's path, size, modification time and inode, its class and
the side: a folder whose files change is decoded again, never served stale. The key
starts with a prefix naming the folder or table, the split and the side
(``source_prefix``); writing an entry removes the older ones under its prefix, so the
cache holds one entry per folder, split and side however often the files change.

An image file drawn that does not decode (corrupt, truncated, not an image despite its
suffix, over PIL's decompression-bomb limit) refuses the run, naming the files: the data
never shrinks without the person knowing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data import checks
from fedpeft.data.cache import cached_arrays
from fedpeft.data.image_files import ImageFiles, list_images
from fedpeft.data.registry import (
    class_names,
    drawn_indices,
    held_out_tenth,
    register_image_loader,
)
from fedpeft.data.sources import ImageArrays, RawDataset
from fedpeft.errors import FedpeftError

log = logging.getLogger(__name__)

_SHOWN = 3  # undecodable files a message names


def check_custom_modality(cfg: DataConfig, model: str, takes_images: bool) -> None:
    """Refuses a folder of images for a model that takes text (a table is read as the
    model reads it, so it needs no check here)."""
    if takes_images:
        return
    for key in ("train_file", "eval_file"):
        path = getattr(cfg, key)
        if path is not None and Path(path).is_dir():
            raise FedpeftError(
                f"`data.{key}` {path} is a folder (images, one subfolder a class), but model "
                f"`{model}` takes text; use an image model (e.g. efficientnet-lite0) or give a "
                "CSV, TSV, JSONL, JSON or Parquet file of texts."
            )


def load_custom_images(cfg: DataConfig, seed: int, side: int, heldout: bool) -> RawDataset:
    """The custom train and eval images a run uses, decoded at ``side`` × ``side``: the
    held-out tenth and the seeded subsets are drawn on the file listing (``drawn_indices``)
    and only the images drawn are decoded; with ``heldout``, the train images outside the
    subset (``heldout_train``) and no eval images."""
    assert cfg.train_file is not None  # checked by DataConfig
    train_path = Path(cfg.train_file)
    files = list_images(train_path, cfg)
    if files.folder and cfg.label_names is None and len(set(files.labels)) < 2:
        raise FedpeftError(
            f"data folder {train_path} has {len(set(files.labels))} class folder(s); need 2 or "
            "more (one subfolder a class)."
        )
    names = class_names(cfg, files.labels, train_path)
    train_ids = _class_ids(files, names)
    if cfg.eval_file is not None:
        eval_files = list_images(Path(cfg.eval_file), cfg)
        eval_ids = _class_ids(eval_files, names)
    else:
        held, kept = held_out_tenth(len(files.paths), seed)
        eval_files, eval_ids = files.take(held), train_ids[held]
        files, train_ids = files.take(kept), train_ids[kept]
    pick_train, pick_eval = drawn_indices(
        cfg, seed, len(files.paths), len(eval_files.paths), heldout
    )
    if not heldout:
        checks.warn_once(log, checks.subset_note(cfg, str(train_path), len(files.paths)))
    eval_source = Path(cfg.eval_file or train_path)
    train_part = (train_path, "heldout" if heldout else "train")
    train = decoded(files.take(pick_train), train_ids[pick_train], side, train_part)
    evaluation = decoded(
        eval_files.take(pick_eval), eval_ids[pick_eval], side, (eval_source, "eval")
    )
    name = train_path.name if files.folder else train_path.stem
    return RawDataset(name, train, evaluation, names, str(train_path))


def decoded(
    files: ImageFiles, labels: np.ndarray, side: int, part: tuple[Path, str]
) -> ImageArrays:
    """``files`` as ``uint8`` (N, side, side, 3) with class ids ``labels``, cached; ``part``
    (the folder or table and the split: train, eval or heldout) keeps one cache entry: a
    new one for the same part and side replaces the last."""
    prefix = source_prefix(part[0], part[1], side)
    key = f"{prefix}-{cache_key(files.paths, labels, side)}"

    def build() -> ImageArrays:
        return ImageArrays(decode_images(files.paths, side), labels)

    return cached_arrays(key, build, replaces=prefix)


def source_prefix(source: Path, split: str, side: int) -> str:
    """The stable start of a cache key for one folder or table, split and side."""
    named = f"{os.path.abspath(source)}\0{split}\0{side}".encode("utf-8", "surrogateescape")
    return f"custom-{hashlib.sha256(named).hexdigest()[:16]}"


def _class_ids(files: ImageFiles, names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(files.labels) - index.keys())
    if unknown:
        what = "class folders" if files.folder else "labels"
        raise FedpeftError(
            f"{files.where} has {what} {unknown[:5]} that are not among the classes "
            f"{names[:10]}; rename or remove them, or list them in `data.label_names`."
        )
    return np.asarray([index[y] for y in files.labels], dtype=np.int64)


def cache_key(paths: list[Path], labels: np.ndarray, side: int) -> str:
    """A name for the decoded arrays that changes when any file, class or the side does."""
    digest = hashlib.sha256(f"custom-images v1 {side}\n".encode())
    for path, label in zip(paths, labels.tolist(), strict=True):
        try:
            st = path.stat()
        except OSError as e:
            raise FedpeftError(f"image {path} cannot be read ({e.strerror}).") from None
        line = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{label}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return f"{len(paths)}x{side}-{digest.hexdigest()[:32]}"


def decode_images(paths: list[Path], side: int, channels: int = 3) -> np.ndarray:
    """Every image as ``uint8`` (N, side, side, channels): RGB, or with ``channels = 1``
    grayscale (PIL's ``L``: ITU-R 601-2 luma), decoded in a few threads (PIL releases the
    GIL while it decodes); any that fails refuses them all, naming it."""
    out = np.empty((len(paths), side, side, channels), dtype=np.uint8)

    def one(i: int) -> str | None:
        try:
            out[i] = decode_image(paths[i], side, channels)
        except Exception as e:  # PIL raises many types on bad bytes; each is the file's fault
            return f"{paths[i]}: {_reason(e)}"
        return None

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bad = [r for r in pool.map(one, range(len(paths))) if r is not None]
    if bad:
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise FedpeftError(
            f"{len(bad)} of {len(paths)} image file(s) cannot be decoded "
            f"({'; '.join(bad[:_SHOWN])}{more}); remove or replace them."
        )
    log.info("decoded %d images at %d×%d", len(paths), side, side)
    return out


def decode_image(path: Path, side: int, channels: int = 3) -> np.ndarray:
    """One image file as ``uint8`` (side, side, channels), RGB or (1) grayscale: upright
    (EXIF), resized."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still ≥ side
        upright = ImageOps.exif_transpose(im)
        if upright.mode in ("I", "F"):  # PIL's convert clips them to 0–255: white or black
            raise _WideMode(
                f"its pixels are {'32-bit integers' if upright.mode == 'I' else 'floats'} "
                f"(PIL mode {upright.mode}), which have no 8-bit range; save it as 8- or 16-bit"
            )
        if upright.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
            high = (np.asarray(upright, dtype=np.uint16) >> 8).astype(np.uint8)
            upright = Image.fromarray(high)
        pic = upright.convert("RGB" if channels == 3 else "L")
    if pic.size != (side, side):
        pic = pic.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(pic, dtype=np.uint8).reshape(side, side, channels)


class _WideMode(ValueError):
    """An image whose pixels PIL cannot bring to 8 bits without clipping them."""


def _reason(e: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, _WideMode):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can read"
    if isinstance(e, Image.DecompressionBombError):
        return "too many pixels (over PIL's decompression-bomb limit)"
    first = str(e).splitlines()[0][:100] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


register_image_loader("custom", load_custom_images)
