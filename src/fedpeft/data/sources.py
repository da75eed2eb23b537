"""Where datasets come from: ``$FEDPEFT_DATA_DIR``, then ``../shared/data``, then the hub."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpeft.errors import FedpeftError

csv.field_size_limit(1 << 24)


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
class RawDataset:
    name: str
    train: RawSplit | ImageArrays
    eval: RawSplit | ImageArrays
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


def read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and raw label strings from a CSV, TSV (with header) or JSONL file."""
    if not path.is_file():
        raise FedpeftError(f"data file {path} does not exist; check `data.train_file`/`eval_file`.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise FedpeftError(
            f"data file {path} has suffix {suffix!r}; expected .csv, .tsv or .jsonl."
        )
    if not rows:
        raise FedpeftError(f"data file {path} has no rows.")
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise FedpeftError(
                f"data file {path} has no column `{col}` (found: {', '.join(map(str, rows[0]))}); "
                "set `data.text_column` / `data.label_column`."
            )
    texts, labels = [], []
    for i, row in enumerate(rows):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise FedpeftError(f"data file {path}, row {i + 1}: missing text or label.")
        texts.append(str(text))
        labels.append(str(label).strip())
    return texts, labels


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FedpeftError(
                    f"data file {path}, line {i + 1}: not valid JSON ({e})."
                ) from None
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
            f"{where} has labels {unknown[:5]} that the train split lacks "
            f"(train labels: {names[:10]})."
        )
    return np.asarray([index[x] for x in raw], dtype=np.int64)


def hub_dataset(hub_id: str, config: str | None, split: str, text: str, label: str) -> RawSplit:
    """One split from the Hugging Face hub (needs network access)."""
    import datasets  # heavy, and only for the hub path

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
