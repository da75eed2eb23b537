"""More text classification sets from ``../shared/data``: Banking77 (77 intents), TREC
(6 coarse / 50 fine question types) and 20 Newsgroups (20 topics, the "bydate" split).

Each reads the files as the data README describes them; without them, the hub is tried.
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data.cleaning import register_text_cleaning
from fedpeft.data.registry import Loader, register_dataset
from fedpeft.data.sources import RawDataset, RawSplit, encode_labels, find_local, hub_dataset
from fedpeft.errors import FedpeftError

banking77_text = register_text_cleaning("banking77", str.strip)


def _banking77(cfg: DataConfig, seed: int) -> RawDataset:
    """Banking77 (Casanueva et al., 2020): ``text,category`` CSVs; the 77 intents in the
    order of ``categories.json`` (the hub's label ids use the same order)."""
    folder = find_local("banking77", ["train.csv", "test.csv", "categories.json"])
    if folder is None:
        train = hub_dataset("banking77", None, "train", "text", "label")
        test = hub_dataset("banking77", None, "test", "text", "label")
        names = [str(i) for i in range(77)]
        return RawDataset("banking77", train, test, names, "hub:banking77")
    names = [str(n) for n in json.loads((folder / "categories.json").read_text())]

    def split(file: str) -> RawSplit:
        with (folder / file).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        labels = encode_labels([r["category"] for r in rows], names, str(folder / file))
        return RawSplit([banking77_text(r["text"]) for r in rows], labels)

    return RawDataset("banking77", split("train.csv"), split("test.csv"), names, str(folder))


TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
trec_text = register_text_cleaning("trec", str.strip)
register_text_cleaning("trec_fine", trec_text)


def _trec_rows(path: Path, fine: bool) -> tuple[list[str], list[str]]:
    """Lines ``COARSE:fine question`` (latin-1) → (questions, labels)."""
    texts, labels = [], []
    for i, line in enumerate(path.read_text(encoding="latin-1").splitlines()):
        if not line.strip():
            continue
        label, _, question = line.partition(" ")
        coarse, colon, _ = label.partition(":")
        if not colon or not question:
            raise FedpeftError(f"{path}, line {i + 1}: expected `COARSE:fine question`.")
        texts.append(trec_text(question))
        labels.append(label if fine else coarse)
    return texts, labels


def _trec(fine: bool) -> Loader:
    name = "trec_fine" if fine else "trec"

    def load(cfg: DataConfig, seed: int) -> RawDataset:
        """TREC (Li & Roth, 2002): 6 coarse classes, or the 50 fine ``COARSE:fine`` ones
        (sorted; the test set holds 42 of them)."""
        folder = find_local("trec", ["train_5500.label", "TREC_10.label"])
        if folder is None:
            raise FedpeftError(
                "dataset trec is not in any local data folder; set FEDPEFT_DATA_DIR to the "
                "folder holding trec/train_5500.label and trec/TREC_10.label."
            )
        train_texts, train_raw = _trec_rows(folder / "train_5500.label", fine)
        test_texts, test_raw = _trec_rows(folder / "TREC_10.label", fine)
        names = sorted(set(train_raw)) if fine else TREC_COARSE
        train = RawSplit(train_texts, encode_labels(train_raw, names, "trec train"))
        test = RawSplit(test_texts, encode_labels(test_raw, names, "trec test"))
        return RawDataset(name, train, test, names, str(folder))

    return load


_HEADER = re.compile(r"^([A-Za-z-]+):\s*(.*)$")


def newsgroup_text(raw: str) -> str:
    """A post without its headers, but with its subject line first.

    The header block (up to the first blank line) names the newsgroup itself (``Newsgroups:``,
    ``Path:``, ``Xref:``), which would leak the label; scikit-learn's ``remove=("headers",)``
    drops it all. The ``Subject:`` is what the author wrote, so it is kept.
    """
    head, _, body = raw.partition("\n\n")
    subject = ""
    for line in head.splitlines():
        m = _HEADER.match(line)
        if m and m.group(1).lower() == "subject":
            subject = m.group(2).strip()
            break
    text = f"{subject}\n{body}" if subject else body
    return re.sub(r"\s+", " ", text).strip()


register_text_cleaning("20newsgroups", newsgroup_text)


def _20newsgroups(cfg: DataConfig, seed: int) -> RawDataset:
    """20 Newsgroups, "bydate" split (Lang, 1995; the split of scikit-learn's
    ``fetch_20newsgroups``), read from the tar.gz without unpacking it (latin-1)."""
    folder = find_local("20newsgroups", ["20news-bydate.tar.gz"])
    if folder is None:
        raise FedpeftError(
            "dataset 20newsgroups is not in any local data folder; set FEDPEFT_DATA_DIR to the "
            "folder holding 20newsgroups/20news-bydate.tar.gz."
        )
    posts: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    with tarfile.open(folder / "20news-bydate.tar.gz", "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[2].startswith("."):
                continue
            split = parts[0].removeprefix("20news-bydate-")
            f = tar.extractfile(member)
            if split not in posts or f is None:
                continue
            posts[split].append((parts[1], parts[2], f.read().decode("latin-1")))
    names = sorted({group for group, _, _ in posts["train"]})

    def split_of(rows: list[tuple[str, str, str]], where: str) -> RawSplit:
        rows = sorted(rows, key=lambda r: (r[0], int(r[1]) if r[1].isdigit() else 0, r[1]))
        labels = encode_labels([r[0] for r in rows], names, where)
        return RawSplit([newsgroup_text(r[2]) for r in rows], np.asarray(labels))

    return RawDataset(
        "20newsgroups",
        split_of(posts["train"], "20newsgroups train"),
        split_of(posts["test"], "20newsgroups test"),
        names,
        str(folder),
    )


register_dataset("banking77", _banking77)
register_dataset("trec", _trec(fine=False))
register_dataset("trec_fine", _trec(fine=True))
register_dataset("20newsgroups", _20newsgroups)
