"""Extractive QA features: each question with its context cut into overlapping windows.

A context longer than a window is split by the tokenizer itself (fast tokenizers'
``return_overflowing_tokens`` with ``stride`` tokens of overlap, ``truncation =
"only_second"`` so the question is repeated in every window); ``offset_mapping`` ties
each context token back to its characters. A window's target is the answer's first and
last token; a window that does not hold the whole answer points both at ``[CLS]`` (as
Devlin et al., 2019 and Hugging Face's ``run_qa`` train SQuAD). Questions longer than half
a window are cut to that many tokens so the context always has room.

The training unit is the window (feature); a question's windows always stay together, on
one client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpeft.config import DataConfig
from fedpeft.data.partition import partition_indices
from fedpeft.data.questions import QAExamples
from fedpeft.data.tokenized import bucketed_batches, length_sorted_batches
from fedpeft.errors import FedpeftError


@dataclass(frozen=True)
class QABatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    start_positions: torch.Tensor
    end_positions: torch.Tensor

    def to(self, device: torch.device) -> QABatch:
        types = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return QABatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            types,
            self.start_positions.to(device),
            self.end_positions.to(device),
        )

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        """``AutoModelForQuestionAnswering``'s keywords; its loss is the mean of the start
        and end cross-entropies."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        if with_labels:
            inputs |= {"start_positions": self.start_positions, "end_positions": self.end_positions}
        return inputs


@dataclass(frozen=True)
class QASplit:
    """Windows (features) tokenised once, with the questions they came from."""

    input_ids: list[np.ndarray]
    token_types: list[np.ndarray] | None
    starts: np.ndarray  # target start token per window (0: [CLS], the answer is elsewhere)
    ends: np.ndarray
    example: np.ndarray  # the question each window belongs to
    offsets: list[np.ndarray]  # (tokens, 2) character spans; -1 outside the context
    examples: QAExamples
    pad_id: int
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def labels(self) -> np.ndarray:
        """One class for every window (partitions are made by question, see below)."""
        return np.zeros(len(self), dtype=np.int64)

    def collate(self, idx: np.ndarray) -> QABatch:
        """Windows padded on the right to the batch's longest (dynamic padding)."""
        seqs = [self.input_ids[int(i)] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        types = None if self.token_types is None else torch.zeros_like(ids)
        for row, i in enumerate(idx):
            n = len(seqs[row])
            ids[row, :n] = torch.from_numpy(seqs[row])
            mask[row, :n] = 1
            if types is not None and self.token_types is not None:
                types[row, :n] = torch.from_numpy(self.token_types[int(i)])
        starts, ends = torch.from_numpy(self.starts[idx]), torch.from_numpy(self.ends[idx])
        return QABatch(ids, mask, types, starts, ends)

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 8
    ) -> Iterator[QABatch]:
        """One seeded, length-bucketed epoch, exactly as ``TokenizedSplit.train_batches``."""
        for batch in bucketed_batches(indices, self.lengths, batch_size, rng, bucket):
            yield self.collate(batch)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, QABatch]]:
        for idx in length_sorted_batches(self.lengths, batch_size):
            yield idx, self.collate(idx)


def tokenize_qa(
    examples: QAExamples, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int
) -> QASplit:
    """Every question's windows of ``max_length`` tokens overlapping by ``stride``, once."""
    if not tokenizer.is_fast:
        raise FedpeftError(
            "extractive QA needs a fast tokenizer (offset mappings); this model's is slow."
        )
    room = max_length // 2 - 3  # context tokens left beside the longest kept question
    if not 0 <= stride < room:
        raise FedpeftError(
            f"`model.doc_stride` is {stride} but must be below {room} (half of "
            f"`model.max_length` = {max_length}, less 3 special tokens); lower it."
        )
    questions = _cut_questions(examples.questions, tokenizer, max_length // 2)
    enc = tokenizer(
        questions,
        examples.contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    ids, offsets, example = [], [], enc["overflow_to_sample_mapping"]
    starts, ends = np.zeros(len(example), np.int64), np.zeros(len(example), np.int64)
    for f, q in enumerate(example):
        seq = np.asarray([-1 if s is None else s for s in enc.sequence_ids(f)])
        off = np.asarray(enc["offset_mapping"][f], dtype=np.int64).reshape(-1, 2)
        off[seq != 1] = -1
        ids.append(np.asarray(enc["input_ids"][f], dtype=np.int64))
        offsets.append(off)
        starts[f], ends[f] = answer_tokens(off, examples.starts[q][0], examples.answers[q][0])
    types = None
    if "token_type_ids" in enc:
        types = [np.asarray(t, dtype=np.int64) for t in enc["token_type_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    example_arr = np.asarray(example, dtype=np.int64)
    return QASplit(ids, types, starts, ends, example_arr, offsets, examples, int(pad), lengths)


def answer_tokens(offsets: np.ndarray, start_char: int, text: str) -> tuple[int, int]:
    """(first, last) token of the answer ``[start_char, start_char + len(text))`` within a
    window's context tokens (``offsets``, -1 outside the context), or (0, 0) — ``[CLS]`` —
    when the window does not hold all of it."""
    end_char = start_char + len(text)
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if len(ctx) == 0 or offsets[ctx[0], 0] > start_char or offsets[ctx[-1], 1] < end_char:
        return 0, 0
    first = ctx[np.flatnonzero(offsets[ctx, 0] <= start_char)[-1]]
    last = ctx[np.flatnonzero(offsets[ctx, 1] >= end_char)[0]]
    return int(first), int(last)


def _cut_questions(
    questions: list[str], tokenizer: PreTrainedTokenizerBase, limit: int
) -> list[str]:
    """Questions without leading spaces, each cut after its ``limit``-th token."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [
        q if len(off) <= limit else q[: off[limit - 1][1]]
        for q, off in zip(questions, enc["offset_mapping"], strict=True)
    ]


def partition_questions(examples: QAExamples, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Question indices per client: ``natural`` gives each client whole articles (a seeded
    shuffle of the articles cut into ``num_clients`` near-equal runs; Flower Datasets'
    ``NaturalIdPartitioner`` makes one partition per id, not a fixed number of clients),
    ``iid`` a uniform split of the questions (Flower's ``IidPartitioner``)."""
    k = cfg.num_clients
    if cfg.partition == "iid":
        return partition_indices(examples.labels, cfg, seed)
    if cfg.partition != "natural":
        raise FedpeftError(
            f"`data.partition` is {cfg.partition!r}, but question answering has no classes "
            "to skew; use 'natural' (whole articles per client) or 'iid'."
        )
    articles = np.unique(examples.articles)
    if len(articles) < k:
        cut = cfg.train_size is not None and len(examples) >= cfg.train_size  # else: all of it
        raise FedpeftError(
            f"{len(articles)} articles cannot give `data.num_clients`={k} clients whole "
            f"articles each; lower `data.num_clients`, {'raise `data.train_size`, ' * cut}"
            "use 'iid' or give more articles."
        )
    shuffled = np.random.default_rng([seed, 0xA27]).permutation(articles)
    return [
        np.flatnonzero(np.isin(examples.articles, group)) for group in np.array_split(shuffled, k)
    ]


def windows_of(split: QASplit, questions: np.ndarray) -> np.ndarray:
    """The window indices of ``questions`` (a question's windows stay together)."""
    return np.flatnonzero(np.isin(split.example, questions))
