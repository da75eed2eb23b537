"""Extractive question answering data in SQuAD format (Rajpurkar et al., 2016).

A SQuAD file is ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}]}]}]}]}``. ``data.dataset = "squad"``
reads SQuAD v1.1 from the local data folder (``squad_v1.1/``: the full train set and the
official dev set), or the user's own files in the same format from ``data.train_file``
(and ``data.eval_file``; without it, a seeded tenth of the articles is held out).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data import checks
from fedpeft.data.questions import QA_LABELS, QAExamples
from fedpeft.data.sources import RawDataset, find_local
from fedpeft.errors import FedpeftError

log = logging.getLogger("fedpeft.data")


def read_squad(path: Path) -> QAExamples:
    """Every question of a SQuAD-format JSON file; an answer whose ``answer_start`` does not
    point at its text is moved to the text's first occurrence (a missing one is an error)."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8-sig"))["data"]  # a BOM is fine
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        lines = isinstance(e, json.JSONDecodeError) and e.msg == "Extra data" and e.lineno > 1
        why = "JSON lines (one object a line), not one JSON document" if lines else ""
        raise FedpeftError(
            f"cannot read SQuAD data from {path} ({why or f'{type(e).__name__}: {e}'}); give "
            'a JSON file in SQuAD format: {"data": [{"title", "paragraphs": [{"context", '
            '"qas"}]}]}.'
        ) from None
    cols: dict[str, list] = {k: [] for k in ("ids", "art", "ctx", "q", "ans", "st")}
    a = moved = 0
    try:
        for a, article in enumerate(articles):
            for para in article["paragraphs"]:
                context = _text(para["context"], "a context", path, a)
                for qa in para["qas"]:
                    _text(qa["question"], f"question {qa['id']!r}", path, a)
                    texts, starts, shifted = _answers(qa, context, path)
                    moved += shifted
                    for key, value in zip(
                        cols,
                        (str(qa["id"]), a, context, qa["question"], texts, starts),
                        strict=True,
                    ):
                        cols[key].append(value)
    except (KeyError, TypeError) as e:
        what = (
            f"lacks field {e}"
            if isinstance(e, KeyError)
            else f"has a field of the wrong kind ({e})"
        )
        raise FedpeftError(
            f"SQuAD file {path} {what} in article {a}; each article needs `paragraphs`, each "
            "a `context` and `qas`, each question `id`, `question` and a list of `answers` "
            "with `text` and `answer_start`."
        ) from None
    if not cols["ids"]:
        raise FedpeftError(f"SQuAD file {path} holds no questions; give at least one.")
    if moved:
        checks.warn_once(
            log,
            f"{moved} answers of SQuAD file {path} have an `answer_start` that does not "
            "point at their text; each is read at its text's first occurrence in the context",
        )
    arts = np.asarray(cols["art"], dtype=np.int64)
    return QAExamples(cols["ids"], arts, cols["ctx"], cols["q"], cols["ans"], cols["st"])


def _text(value: object, what: str, path: Path, article: int) -> str:
    if not isinstance(value, str):
        raise FedpeftError(
            f"SQuAD file {path}: {what} in article {article} is {value!r}, not text; "
            "give every context and question as a string."
        )
    return value


def _start(value: object) -> int | None:
    """A whole-number ``answer_start`` (an int, or a string of digits), else ``None``: 3.7
    or ``true`` would be read as 3 or 1 by ``int``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _answers(qa: dict, context: str, path: Path) -> tuple[list[str], list[int], int]:
    """The answers' texts and starts, and how many starts were moved to their text."""
    texts, starts, moved = [], [], 0
    for answer in qa["answers"]:
        text, start = answer["text"], _start(answer["answer_start"])
        if not isinstance(text, str) or not text.strip() or start is None:
            raise FedpeftError(
                f"SQuAD file {path}: question {qa['id']!r} has answer {text!r} at "
                f"{answer['answer_start']!r}; each answer needs a non-empty `text` and a "
                "whole-number `answer_start`."
            )
        if context[start : start + len(text)] != text:
            start = context.find(text)
            moved += 1
            if start < 0:
                raise FedpeftError(
                    f"SQuAD file {path}: question {qa['id']!r} has answer {text!r}, which its "
                    "context does not contain; fix or drop that answer."
                )
        texts.append(text)
        starts.append(start)
    if not texts:
        raise FedpeftError(
            f"SQuAD file {path}: question {qa['id']!r} has no answer; extractive QA (SQuAD "
            "v1.1) needs at least one per question."
        )
    return texts, starts, moved


def _asked(examples: QAExamples) -> list[str]:
    """Each question with its context, as one text (what an evaluation must not have seen)."""
    return [f"{c}\n{q}" for c, q in zip(examples.contexts, examples.questions, strict=True)]


def hold_out_articles(examples: QAExamples, seed: int) -> tuple[QAExamples, QAExamples]:
    """(train, eval): a seeded tenth of the articles (at least one) held out whole."""
    ids = np.unique(examples.articles)
    if len(ids) < 2:
        raise FedpeftError(
            "a SQuAD train file with one article cannot be split into train and eval; "
            "give `data.eval_file` or more articles."
        )
    held = np.random.default_rng([seed, 0x5A0]).permutation(ids)[: max(1, len(ids) // 10)]
    mask = np.isin(examples.articles, held)
    return examples.take(np.flatnonzero(~mask)), examples.take(np.flatnonzero(mask))


def load_squad(cfg: DataConfig, seed: int) -> RawDataset:
    """SQuAD v1.1 from the local data folder, or the user's SQuAD-format files."""
    if cfg.train_file is not None:
        train = read_squad(Path(cfg.train_file))
        if cfg.eval_file is not None:
            evaluation = read_squad(Path(cfg.eval_file))
            where = f"data file {cfg.eval_file}"
        else:
            train, evaluation = hold_out_articles(train, seed)
            where = f"the articles held out of {cfg.train_file}"
        where += "; a question with its context"
        checks.warn_once(log, checks.leakage_warning(_asked(train), _asked(evaluation), where))
        return RawDataset("squad", train, evaluation, QA_LABELS, cfg.train_file)
    files = ["train-v1.1.reconstructed.json", "dev-v1.1.json"]
    folder = find_local("squad_v1.1", files)
    if folder is None:
        raise FedpeftError(
            "SQuAD v1.1 is not in the data folders (`squad_v1.1/` with "
            f"{' and '.join(files)}); set FEDPEFT_DATA_DIR, or give your own SQuAD-format "
            "file as `data.train_file`."
        )
    train, dev = read_squad(folder / files[0]), read_squad(folder / files[1])
    return RawDataset("squad", train, dev, QA_LABELS, str(folder))
