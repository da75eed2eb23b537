"""Where datasets come from: ``$FEDPEFT_DATA_DIR``, then ``../shared/data``, then the hub."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedpeft.data import checks
from fedpeft.data.labels import normalize_label
from fedpeft.errors import FedpeftError
from fedpeft.hub import datasets_offline_reason

if TYPE_CHECKING:
    from fedpeft.data.questions import QAExamples

log = logging.getLogger(__name__)

csv.field_size_limit(1 << 24)

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")  # what ``read_table`` reads
_COMPRESSED = (".gz", ".zip", ".bz2", ".xz", ".zst", ".7z")


@dataclass(frozen=True)
class RawSplit:
    texts: list[str]
    labels: np.ndarray  # int64 class ids

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> RawSplit:
        return RawSplit([self.texts[i] for i in idx], self.labels[idx])


@dataclass(frozen=True)
class ImageArrays:
    """Decoded images, ``uint8`` of shape (N, H, W, C) with C = 1 (grayscale) or 3 (RGB)."""

    images: np.ndarray
    labels: np.ndarray  # int64 class ids

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> ImageArrays:
        return ImageArrays(np.ascontiguousarray(self.images[idx]), self.labels[idx])


@dataclass(frozen=True)
class ImageTexts:
    """Pairs of an image and a text, with each pair's class (columns)."""

    images: Sequence[np.ndarray] | np.ndarray  # uint8 (H, W, C), C = 1 or 3; pairs share
    image: np.ndarray  # int64: each pair's image (index into ``images``)
    texts: list[str]
    labels: np.ndarray  # int64: each pair's class (VQA: its answer; -1: not a class)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: np.ndarray) -> ImageTexts:
        return ImageTexts(
            self.images, self.image[idx], [self.texts[int(i)] for i in idx], self.labels[idx]
        )


@dataclass(frozen=True)
class Annotated:
    """One image's file, size and boxes."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 (k, 4): x0, y0, x1, y1 in pixels
    classes: np.ndarray  # int64 (k,)
    crowd: np.ndarray  # bool (k,): COCO crowd regions (never trained on, ignored in scoring)


@dataclass(frozen=True)
class DetectionImages:
    """Images with their boxes (rows), and each image's dominant class: the class of most
    of its non-crowd boxes (ties: the lowest class id; -1 when it has none)."""

    items: list[Annotated]

    def __len__(self) -> int:
        return len(self.items)

    def take(self, idx: np.ndarray) -> DetectionImages:
        return DetectionImages([self.items[int(i)] for i in idx])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([dominant_class(a) for a in self.items], dtype=np.int64)


def dominant_class(item: Annotated) -> int:
    """The class most of the image's non-crowd boxes have (ties: the lowest id); -1: none."""
    counts = Counter(int(c) for c in item.classes[~item.crowd])
    if not counts:
        return -1
    return min(counts, key=lambda c: (-counts[c], c))


@dataclass(frozen=True)
class RawDataset:
    name: str
    train: RawSplit | ImageArrays | QAExamples | ImageTexts | DetectionImages
    eval: RawSplit | ImageArrays | QAExamples | ImageTexts | DetectionImages
    label_names: list[str]
    source: str  # the folder, files or hub id it came from

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def data_dirs() -> list[Path]:
    """The local folders searched, in order."""
    dirs: list[Path] = []
    if env := os.environ.get("FEDPEFT_DATA_DIR"):
        dirs.append(Path(env))
    dirs.append(Path.cwd().parent / "shared" / "data")
    repo_root = Path(__file__).resolve().parents[3]
    dirs.append(repo_root.parent / "shared" / "data")
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_local(folder: str, files: list[str]) -> Path | None:
    """The first searched folder holding ``folder/<every file>``, else None."""
    for d in data_dirs():
        if all((d / folder / f).is_file() for f in files):
            return d / folder
    return None


TRAINING_FILES = "`data.train_file`/`eval_file`"  # the settings that name a run's data files


def read_table(
    path: Path, text_column: str, label_column: str, kind: str = "text"
) -> tuple[list[str], list[str]]:
    """Texts and canonical label names (``fedpeft.data.labels``) from a CSV or TSV file
    with a header, a JSONL file, a JSON file holding one array of objects (all in UTF-8; a
    byte-order mark is allowed) or a Parquet file. ``kind`` names what ``text_column``
    holds in messages: ``"text"``, or ``"image"`` (paths; its key is ``data.image_column``).

    A missing text (no value, NaN, or only whitespace) is kept as ``""``; rows without a
    label are refused. What looks wrong is warned about once (``fedpeft.data.checks``)."""
    rows = read_rows(path, (text_column, label_column))
    hint = f"set `data.{kind}_column` / `data.label_column`"
    require_columns(path, rows, (text_column, label_column), hint)
    texts, labels = [], []
    spellings: dict[str, set[str]] = {}
    unlabelled: list[int] = []
    for i, row in enumerate(rows):
        where = f"data file {path}, row {i + 1}"
        raw = row.get(label_column)
        label = normalize_label(raw, where)
        texts.append(text_or_empty(row, text_column, where, kind))
        if label is None:
            unlabelled.append(i + 1)
            continue
        if isinstance(raw, str):
            spellings.setdefault(label, set()).add(raw.strip())
        labels.append(label)
    _refuse_unlabelled(path, unlabelled, label_column)
    _warn_about_table(path, texts, labels, spellings, kind)
    return texts, labels


def text_or_empty(row: dict[str, object], column: str, where: str, kind: str) -> str:
    """``row_text``, where a missing text (``kind`` "text" only) is ``""``."""
    value = row.get(column)
    if kind == "text" and is_missing_text(value):
        return ""
    return row_text(row, column, where, kind)


def is_missing_text(value: object) -> bool:
    """None, a float NaN (a JSON ``NaN``, a Parquet or pandas null) or a blank string."""
    if isinstance(value, float):
        return value != value  # NaN
    return value is None or (isinstance(value, str) and not value.strip())


def _refuse_unlabelled(path: Path, rows: list[int], label_column: str) -> None:
    if not rows:
        return
    where = f"data file {path}, row {rows[0]}"
    if len(rows) == 1:
        raise FedpeftError(f"{where} has no label in `{label_column}`; fill it in or drop the row.")
    raise FedpeftError(
        f"{where} has no label in `{label_column}`, nor do {len(rows) - 1} other rows; fill "
        "them in or drop those rows."
    )


def _warn_about_table(
    path: Path, texts: list[str], labels: list[str], spellings: dict[str, set[str]], kind: str
) -> None:
    notes = [checks.spelling_warning(path, spellings)]
    if kind == "text":
        notes.append(checks.missing_text_warning(path, sum(1 for t in texts if not t)))
        if path.suffix.lower() in (".csv", ".tsv"):
            delimiter = _delimiter(path.suffix.lower())
            notes.append(checks.swallowed_rows_warning(path, texts, labels, delimiter))
    checks.warn_once(log, *notes)


def require_columns(
    path: Path, rows: list[dict[str, object]], columns: tuple[str, ...], hint: str
) -> None:
    """Refuses ``rows`` (``read_rows``) whose header lacks one of ``columns``, naming those
    it has; ``hint``: how to name another column. JSON rows need not all hold every key:
    a column is there when any row holds it (a row without it is missing that cell)."""
    header = dict.fromkeys(key for row in rows for key in row)
    for col in columns:
        if col not in header:
            found = ", ".join(f"`{c}`" for c in header)
            raise FedpeftError(f"data file {path} has no column `{col}` (found: {found}); {hint}.")


def row_text(row: dict[str, object], column: str, where: str, kind: str = "text") -> str:
    """The text (``kind``: what it holds, for messages) in ``row``'s ``column``; refused
    when missing (None, NaN) or not a scalar."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        raise FedpeftError(f"{where} has no {kind} in `{column}`; fill it in or drop the row.")
    if isinstance(value, dict | list | bytes):
        raise FedpeftError(f"{where}: the {kind} is a {type(value).__name__}, not a string.")
    return str(value)


def read_rows(
    path: Path, columns: tuple[str, ...], setting: str = TRAINING_FILES
) -> list[dict[str, object]]:
    """The rows of a data file in any format ``read_table`` takes, each a dict under the
    file's header, at least one. ``columns``: the columns the caller reads (a CSV row must
    reach them and name each once); ``setting``: what a person changes to point at another
    file, named in the refusals."""
    if path.is_dir():
        raise FedpeftError(f"data file {path} is a folder; point {setting} at a file in it.")
    if not path.is_file():
        raise FedpeftError(f"data file {path} does not exist; check {setting}.")
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED:
        raise FedpeftError(
            f"data file {path} is compressed ({suffix}); decompress it and point {setting} "
            "at the .csv, .tsv, .jsonl, .json or .parquet file inside."
        )
    if suffix not in TABLE_SUFFIXES:
        raise FedpeftError(
            f"data file {path} has suffix {suffix!r}; expected .csv, .tsv, .jsonl, .json or "
            ".parquet (name the file after its format)."
        )
    if suffix == ".parquet":
        rows = _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, _utf8(path), columns)
    else:
        rows = _read_json(path, _utf8(path))
    if not rows:
        raise FedpeftError(f"data file {path} has no rows.")
    return rows


def _delimiter(suffix: str) -> str:
    return "\t" if suffix == ".tsv" else ","


def _read_delimited(path: Path, text: str, columns: tuple[str, ...]) -> list[dict[str, object]]:
    """A CSV or TSV file's rows under its header (the first non-blank line); blank lines
    (nothing, spaces, or only empty cells: a spreadsheet's empty row) are skipped. A row with
    fewer cells than ``columns`` need, or with text in cells past the header, is refused:
    an unquoted delimiter or line break in a text would otherwise shift its label. A column
    that ``columns`` names twice in the header is refused too (which one was meant?)."""
    delimiter = _delimiter(path.suffix.lower())
    try:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        table = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines: none
    except csv.Error as e:
        raise FedpeftError(
            f"data file {path} is not a valid {path.suffix[1:].upper()} ({e})."
        ) from None
    header, body = (table[0], table[1:]) if table else ([], [])
    _refuse_other_delimiter(path, header, columns)
    for col in columns:
        if header.count(col) > 1:
            raise FedpeftError(
                f"data file {path} has {header.count(col)} columns named `{col}`; rename all "
                "but one."
            )
    need = max((header.index(c) + 1 for c in columns if c in header), default=0)
    name = "tab" if delimiter == "\t" else "comma"
    for i, r in enumerate(body):
        if len(r) < need or any(cell.strip() for cell in r[len(header) :]):
            raise FedpeftError(
                f"data file {path}, row {i + 1} has {len(r)} cell(s) where the header has "
                f"{len(header)}; put texts that hold a {name} or a line break in double quotes, "
                "and close every quote."
            )
    return [dict(zip_longest(header, r[: len(header)])) for r in body]


def _refuse_other_delimiter(path: Path, header: list[str], columns: tuple[str, ...]) -> None:
    """A header that is one cell holding a ';' or a tab, without the columns wanted: the
    file is separated by that, not by what its suffix says."""
    if len(header) != 1 or header[0] in columns:
        return
    comma = path.suffix.lower() == ".csv"
    if "\t" in header[0] and comma:
        raise FedpeftError(
            f"data file {path} looks tab-separated (its header is one cell, {header[0]!r}); "
            "name it .tsv, or save it with commas."
        )
    if ";" in header[0]:
        sep = "commas" if comma else "tabs"
        raise FedpeftError(
            f"data file {path} looks ';'-separated (its header is one cell, {header[0]!r}); "
            f"save it with {sep} as the separator."
        )


def _utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are refused with the line that holds them."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FedpeftError(f"data file {path} cannot be read ({e.strerror}).") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FedpeftError(
            f"data file {path} is UTF-16 (it starts with a UTF-16 byte-order mark); re-save "
            "it as UTF-8."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FedpeftError(
            f"data file {path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
            "re-save the file as UTF-8."
        ) from None


def _read_json(path: Path, text: str) -> list[dict[str, object]]:
    """The rows of a JSONL file, or of a ``.json`` file holding one array of objects."""
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{"):
        _refuse_one_object(path, text)
    if path.suffix.lower() != ".json" or not text.lstrip().startswith("["):
        return _read_jsonl(path, text)
    try:
        rows = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FedpeftError(f"data file {path} is not valid JSON ({e}).") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise FedpeftError(f"data file {path}, row {i + 1}: expected a JSON object.")
    return list(rows)


def _refuse_one_object(path: Path, text: str) -> None:
    """A ``.json`` file that is one object over several lines (e.g. ``{"data": [...]}``)
    is not rows; JSONL (one object a line) is not one JSON document, so it passes."""
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        return
    if _looks_like_squad(whole):
        raise FedpeftError(
            f"data file {path} looks like SQuAD (a `data` list of articles with "
            "`paragraphs`), not a table of rows; a run trains question answering on it as "
            "`data.train_file` with `data.dataset = 'squad'`."
        )
    if isinstance(whole, dict) and len(text.strip().splitlines()) > 1:
        keys = ", ".join(f"`{k}`" for k in list(whole)[:5])
        raise FedpeftError(
            f"data file {path} holds one JSON object (keys {keys}), not rows; give an array "
            "of row objects ([{...}, ...]) or one object a line (JSONL)."
        )


def _looks_like_squad(whole: object) -> bool:
    """``{"data": [{"paragraphs": ...}, ...]}``: SQuAD's layout (``fedpeft.data.squad``)."""
    if not isinstance(whole, dict) or not isinstance(whole.get("data"), list):
        return False
    return any(isinstance(a, dict) and "paragraphs" in a for a in whole["data"])


def _read_parquet(path: Path) -> list[dict[str, object]]:
    import pyarrow as pa  # installed with `datasets`; only for Parquet files
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(path).to_pylist())
    except (pa.ArrowException, OSError) as e:
        raise FedpeftError(f"data file {path} is not a readable Parquet file ({e}).") from None


def _read_jsonl(path: Path, text: str) -> list[dict[str, object]]:
    rows = []
    for i, line in enumerate(text.split("\n")):  # not splitlines: U+2028 may be in a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # ValueError: also a 5,000-digit number
            raise FedpeftError(f"data file {path}, line {i + 1}: not valid JSON ({e}).") from None
        if not isinstance(row, dict):
            raise FedpeftError(f"data file {path}, line {i + 1}: expected a JSON object.")
        rows.append(row)
    return rows


def read_tsv_rows(path: Path, header: bool, encoding: str = "utf-8") -> list[list[str]]:
    """Rows of a tab-separated file with no quoting (GLUE, AG News)."""
    with path.open(newline="", encoding=encoding) as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    return rows[1:] if header else rows


def encode_labels(raw: list[str], names: list[str], where: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - index.keys())
    if unknown:
        raise FedpeftError(
            f"{where} has labels {unknown[:5]} that are not among the classes "
            f"{names[:10]}; fix the labels or `data.label_names`."
        )
    return np.asarray([index[x] for x in raw], dtype=np.int64)


def hub_dataset(hub_id: str, config: str | None, split: str, text: str, label: str) -> RawSplit:
    """One split from the Hugging Face hub (needs network access)."""
    import datasets  # heavy, and only for the hub path

    offline = datasets_offline_reason()
    if offline is not None:  # say so now, not after the hub client's ~50 s of retries
        raise FedpeftError(
            f"dataset {hub_id} is not in any local data folder "
            f"({', '.join(map(str, data_dirs()))}) and the hub is offline ({offline}); "
            "set FEDPEFT_DATA_DIR to the folder holding it."
        )
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # any hub failure is the same message to a user
        raise FedpeftError(
            f"dataset {hub_id} is not in any local data folder "
            f"({', '.join(map(str, data_dirs()))}) "
            f"and could not be fetched from the Hugging Face hub ({type(e).__name__}); "
            "set FEDPEFT_DATA_DIR to the folder holding it."
        ) from None
    return RawSplit(texts=list(ds[text]), labels=np.asarray(ds[label], dtype=np.int64))
