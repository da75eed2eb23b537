"""Image–text pairs, the raw form of the multimodal tasks: DAQUAR's question–image pairs
(visual question answering, Malinowski & Fritz, 2014) and class images turned into
captioned images ("a photo of a {label}.") for image–text matching.

DAQUAR (``daquar_subset/`` in the data folder: ``qa.jsonl`` and ``images/imageN.png``) keeps
its official train/test split. Its questions end in "… in the imageN ?"; that mention of the
image's file name is cut ("… ?"), and any other becomes "the image", so no text names the
picture it belongs to. An answer is
one class, its text as written (a list of objects such as "book, scissor" is one answer);
the classes are the train answers, most frequent first, and a test answer outside them is
class -1 (never predicted right).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data import checks
from fedpeft.data.cache import cached_arrays
from fedpeft.data.sources import ImageArrays, ImageTexts, RawDataset, data_dirs, find_local
from fedpeft.errors import FedpeftError

log = logging.getLogger("fedpeft.data")

CAPTION = "a photo of a {label}."  # CLIP's prompt (Radford et al., 2021)
_CLOSING_MENTION = re.compile(r"\s*\bin\s+th\s*e\s*image\s*\d+\s*(?=\?\s*$)", re.IGNORECASE)
_MENTION = re.compile(r"\b(th\s*e\s*)?image\s*\d+", re.IGNORECASE)


def captioned(arrays: ImageArrays, label_names: list[str]) -> ImageTexts:
    """Each class image with its class's caption "a photo of a {label}."."""
    captions = [CAPTION.format(label=name) for name in label_names]
    labels = np.asarray(arrays.labels, dtype=np.int64)
    return ImageTexts(arrays.images, np.arange(len(labels)), [captions[y] for y in labels], labels)


def clean_question(question: str) -> str:
    """DAQUAR's question without its closing "in the imageN" (also "in th eimageN"); any
    other "the imageN" becomes "the image"."""
    return _MENTION.sub("the image", _CLOSING_MENTION.sub("", question.strip()))


def _read_rows(path: Path) -> list[dict[str, str]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({k: _text(row[k], k) for k in ("split", "image", "question", "answer")})
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise FedpeftError(
                f"{path}, line {i + 1}: expected a JSON object with split, image, question "
                f"and answer ({type(e).__name__}: {e})."
            ) from None
    return rows


def _text(value: object, key: str) -> str:
    """A field as text: a string or a number (an answer "2" may be written 2); a null, an
    empty text or anything else is refused, not read as the class "None" or ""."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{key}` is {value!r}, not a non-empty text")
    return value


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise FedpeftError(f"cannot read image {path} ({e}).") from None


def _images(folder: Path, names: list[str]) -> Sequence[np.ndarray] | np.ndarray:
    """The decoded images; when they share one size, decoded once and cached as ``.npy``
    (read back memory-mapped, without pickle), as CIFAR-10's are."""

    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        more = f" (nor are {len(missing) - 1} other images it names)" if len(missing) > 1 else ""
        raise FedpeftError(
            f"image {folder / missing[0]}, named in {folder / 'qa.jsonl'}, is not there{more}; "
            "add it or drop its rows."
        )
    stats = [(folder / n).stat() for n in names]
    size, mtime = sum(s.st_size for s in stats), max(int(s.st_mtime) for s in stats)
    key = f"daquar-{len(names)}-{size}-{mtime}"

    def build() -> ImageArrays:
        decoded = [_decode(folder / n) for n in names]
        if any(d.shape != decoded[0].shape for d in decoded):
            raise ValueError("images of different sizes")
        return ImageArrays(np.stack(decoded), np.arange(len(names), dtype=np.int64))

    try:
        return cached_arrays(key, build).images
    except ValueError:  # sizes differ: kept as a list, decoded on every load
        return [_decode(folder / n) for n in names]


def answer_vocabulary(answers: list[str]) -> list[str]:
    """The distinct answers, most frequent first (ties in alphabetical order)."""
    counts = Counter(answers)
    return sorted(counts, key=lambda a: (-counts[a], a))


def load_daquar(cfg: DataConfig, seed: int) -> RawDataset:
    files = ["qa.jsonl"]
    folder = find_local("daquar_subset", files)
    if folder is None:
        where = ", ".join(str(d / "daquar_subset") for d in data_dirs())
        raise FedpeftError(
            f"dataset daquar needs qa.jsonl and images/ in one of: {where}; set "
            "FEDPEFT_DATA_DIR to the folder holding daquar_subset."
        )
    rows = _read_rows(folder / files[0])
    other = Counter(r["split"] for r in rows if r["split"] not in ("train", "test"))
    if other:
        checks.warn_once(
            log,
            f"{folder / files[0]}: {other.total()} rows with `split` "
            f"{', '.join(repr(k) for k in sorted(other))} are left out; only 'train' and "
            "'test' rows are read",
        )
        rows = [r for r in rows if r["split"] in ("train", "test")]
    names = sorted({r["image"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    images = _images(folder, names)
    vocab = answer_vocabulary([r["answer"] for r in rows if r["split"] == "train"])
    if not vocab:
        raise FedpeftError(f"{folder / files[0]} holds no train pairs.")
    ids = {a: i for i, a in enumerate(vocab)}

    def split(name: str) -> ImageTexts:
        chosen = [r for r in rows if r["split"] == name]
        if not chosen:
            raise FedpeftError(f"{folder / files[0]} holds no {name} pairs.")
        return ImageTexts(
            images,
            np.asarray([index[r["image"]] for r in chosen], dtype=np.int64),
            [clean_question(r["question"]) for r in chosen],
            np.asarray([ids.get(r["answer"], -1) for r in chosen], dtype=np.int64),
        )

    return RawDataset("daquar", split("train"), split("test"), vocab, str(folder))
