"""What a custom data file may hold by mistake, said in one warning line each.

Nothing here changes the data: labels that differ only in case stay separate classes,
duplicate rows stay, an evaluation text seen in training stays. Each check counts what
looks wrong, names a few examples and says what to change in the file. A run rebuilds its
data more than once in a process (the run, then its per-class report), so each warning is
said once per process (``warn_once``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data.labels import normalize_label
from fedpeft.errors import FedpeftError

_SAID: set[str] = set()
_FEW = 3  # examples named in a warning
SMALL_EVAL = 20  # fewer evaluation examples than this: accuracy moves in coarse steps


def warn_once(log: logging.Logger, *messages: str | None) -> None:
    """Logs each message (``None``: a check that found nothing) as a warning unless this
    process has already said it."""
    for message in messages:
        if message is not None and message not in _SAID:
            _SAID.add(message)
            log.warning("%s", message)


def _few(items: Sequence[str], sep: str = ", ") -> str:
    """The first ``_FEW`` of ``items`` joined, with how many more there are."""
    more = f" (and {len(items) - _FEW} more)" if len(items) > _FEW else ""
    return sep.join(items[:_FEW]) + more


def case_groups(names: Iterable[str]) -> list[list[str]]:
    """Groups of two or more class names that differ only in case, each sorted."""
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(n.casefold(), []).append(n)
    return [g for g in groups.values() if len(g) > 1]


def case_warning(path: object, names: Iterable[str]) -> str | None:
    groups = case_groups(names)
    if not groups:
        return None
    shown = [" / ".join(repr(n) for n in g) for g in groups]
    return (
        f"data file {path} has labels that differ only in case, kept as separate classes: "
        f"{_few(shown, '; ')}; if they are one class, spell them the same in the file"
    )


def spelling_warning(path: object, spellings: dict[str, set[str]]) -> str | None:
    """``spellings``: each class's distinct label strings in the file (stripped)."""
    merged = [
        f"{' and '.join(repr(s) for s in sorted(raw, key=lambda s: (s == name, s)))} "
        f"are one class, {name!r}"
        for name, raw in spellings.items()
        if len(raw) > 1
    ]
    if not merged:
        return None
    return (
        f"data file {path} spells one class in several ways, read as numbers: "
        f"{_few(merged, '; ')}; if they are different classes, spell them as words "
        "(e.g. 'v1.10')"
    )


def _row_like(line: str, delimiter: str, labels: set[str]) -> bool:
    """Whether ``line`` ends like a row of the file: the delimiter, then a label (its
    spelling as the file has it, or read as the loader reads labels)."""
    if delimiter not in line:
        return False
    last = line.rsplit(delimiter, 1)[1].strip()
    if last in labels:
        return True
    if not last or len(last) > 40:  # no label spelled differently is that long
        return False
    try:
        return normalize_label(last, "") in labels
    except FedpeftError:
        return False


def swallowed_rows_warning(
    path: object, texts: Sequence[str], labels: Sequence[str], delimiter: str
) -> str | None:
    """A CSV/TSV text whose lines look like rows of the file (two or more, and half of its
    lines or more, end in the delimiter and one of the file's labels): an unclosed quote
    read them as one text."""
    known = set(labels)
    found = []
    for i, text in enumerate(texts):
        if "\n" in text or "\r" in text:
            lines = re.split(r"\r\n|\r|\n", text)
            like = sum(_row_like(line, delimiter, known) for line in lines)
            if like >= 2 and 2 * like >= len(lines):
                found.append((i + 1, len(lines), like))
    if not found:
        return None
    (row, n, like), more = found[0], len(found) - 1
    also = f" ({more} more such text{'s' * (more != 1)})" if more else ""
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    return (
        f"data file {path}, row {row}: its text holds {n} lines, {like} of which look like "
        f"rows of the file (they end in a {sep} and a label){also}; a quote is probably not "
        "closed, so "
        'those rows were read as one text: close the quote, or double a quote inside a text ("")'
    )


def missing_text_warning(path: object, missing: int) -> str | None:
    if not missing:
        return None
    if missing == 1:
        return f"1 row of data file {path} has no text; it trains as an empty input"
    return f"{missing} rows of data file {path} have no text; they train as empty inputs"


def duplicate_warning(path: object, texts: Sequence[str], labels: Sequence[str]) -> str | None:
    """Rows that repeat an earlier row's text and label exactly (empty texts aside)."""
    pairs = [(t, y) for t, y in zip(texts, labels, strict=True) if t]
    repeats = len(pairs) - len(set(pairs))
    if not repeats:
        return None
    return (
        f"{repeats} of the {len(texts)} rows of data file {path} repeat an earlier row (same "
        "text and label); they weigh those examples more: drop the copies if they are copies"
    )


def leakage_warning(
    train_texts: Sequence[str], eval_texts: Sequence[str], where: str
) -> str | None:
    """Evaluation texts (non-empty) that are also training texts; ``where``: the eval set."""
    seen = set(train_texts)
    shared = sum(1 for t in eval_texts if t and t in seen)
    if not shared:
        return None
    return (
        f"{shared} of the {len(eval_texts)} evaluation texts ({where}) also appear in the "
        "training data: the accuracy is inflated; drop them from one of the two"
    )


def empty_class_warning(
    source: str, names: Sequence[str], train: np.ndarray, evaluation: np.ndarray, named: bool
) -> str | None:
    """Classes with no training example that the evaluation holds (or, with ``named``:
    ``data.label_names`` given, any class): the model cannot learn them."""
    n = len(names)
    in_train = np.bincount(train[train >= 0], minlength=n)[:n]
    in_eval = np.bincount(evaluation[evaluation >= 0], minlength=n)[:n]
    empty = [repr(names[c]) for c in range(n) if in_train[c] == 0 and (named or in_eval[c] > 0)]
    if not empty:
        return None
    return (
        f"{len(empty)} of the {n} classes of {source} have no training example after the "
        f"train/eval split and `data.train_size`: {_few(empty)}; the model cannot learn "
        "them: add examples or raise `data.train_size`"
    )


def subset_note(cfg: DataConfig, source: str, n: int) -> str | None:
    """A user's own file trained on in part (``data.train_size`` below its rows): said,
    since the default size (2,000) was chosen for the built-in sets, not for their file."""
    if cfg.train_size is None or cfg.train_size >= n:
        return None
    return (
        f"training on a seeded {cfg.train_size:,} of the {n:,} training examples of {source} "
        f"(`data.train_size`); set it to {n} (or more) to train on all of them"
    )


def small_eval_warning(source: str, n: int) -> str | None:
    if n == 0 or n >= SMALL_EVAL:
        return None
    examples = "1 example" if n == 1 else f"{n} examples"
    return (
        f"the evaluation set of {source} has {examples}: accuracy on {examples} moves in steps of "
        f"1/{n}; give more (`data.eval_file`, `data.eval_size`)"
    )


def forget_said() -> None:
    """Every warning may be said again (a new run in a long-lived process; tests)."""
    _SAID.clear()
