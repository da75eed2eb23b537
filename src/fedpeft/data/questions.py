"""Questions with their contexts and reference answers: the raw form of extractive QA data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QA_LABELS = ["answer span"]  # one "class": partitions and profiles see every question alike


@dataclass(frozen=True)
class QAExamples:
    """Questions with their paragraph, article and every reference answer (columns)."""

    ids: list[str]
    articles: np.ndarray  # int64: the article (Wikipedia page) each question comes from
    contexts: list[str]
    questions: list[str]
    answers: list[list[str]]  # every reference answer's text
    starts: list[list[int]]  # each answer's character offset in its context

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:
        """One class for every question (what ``RawDataset``'s subsets and profiles read)."""
        return np.zeros(len(self), dtype=np.int64)

    def take(self, idx: np.ndarray) -> QAExamples:
        pick = [int(i) for i in idx]
        return QAExamples(
            [self.ids[i] for i in pick],
            self.articles[idx],
            [self.contexts[i] for i in pick],
            [self.questions[i] for i in pick],
            [self.answers[i] for i in pick],
            [self.starts[i] for i in pick],
        )
