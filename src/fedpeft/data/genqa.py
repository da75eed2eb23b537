"""Generative question answering for causal LMs: context + question → the answer's words.

Each question becomes an instruction prompt through the tokenizer's chat template (as
``data.instruct``: "Answer the question with a short span copied from the context.
\\n\\nContext: …\\n\\nQuestion: …"), with the context cut to ``model.max_length`` tokens
(the question is kept whole), and its target is the first reference answer followed by
the end-of-turn token. The loss covers the answer tokens only:

    L = −(1/|A|) Σ_{t∈A} log p(x_t | x_<t),   A = the answer positions.

Sequences are padded on the left; ``collate_prompts`` gives the prompts alone for greedy
generation (``server.generate``), scored against every reference by ``server.genqa``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedpeft.data.instruct import IGNORE, _ids, _pad, prompt_parts
from fedpeft.data.questions import QAExamples
from fedpeft.data.tokenized import Batch, bucketed_batches, length_sorted_batches
from fedpeft.errors import FedpeftError

TASK = "Answer the question with a short span copied from the context."


@dataclass(frozen=True)
class GenQASplit:
    """Prompt ids and answer ids per question, tokenised once, with the questions."""

    prompts: list[np.ndarray]
    answers: list[np.ndarray]  # per question: the first reference's tokens + the stop token
    examples: QAExamples  # every reference answer (scoring), articles (partitions)
    pad_id: int
    stop_id: int
    lengths: np.ndarray  # prompt + answer tokens
    tokenizer: PreTrainedTokenizerBase = field(repr=False, compare=False)
    pad_left: bool = True

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def labels(self) -> np.ndarray:
        """One class for every question (partitions are made by question)."""
        return np.zeros(len(self), dtype=np.int64)

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, token labels) of question ``i``: prompt + answer, loss on the answer."""
        prompt, answer = self.prompts[i], self.answers[i]
        labels = np.concatenate([np.full(len(prompt), IGNORE, dtype=np.int64), answer])
        return np.concatenate([prompt, answer]), labels

    def collate(self, idx: np.ndarray) -> Batch:
        pairs = [self.sequence(int(i)) for i in idx]
        return _pad([p[0] for p in pairs], [p[1] for p in pairs], self.pad_id)

    def collate_prompts(self, idx: np.ndarray) -> Batch:
        """The prompts alone, left-padded (for generation)."""
        seqs = [self.prompts[int(i)] for i in idx]
        return _pad(seqs, seqs, self.pad_id)

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 8
    ) -> Iterator[Batch]:
        for batch in bucketed_batches(indices, self.lengths, batch_size, rng, bucket):
            yield self.collate(batch)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        for idx in length_sorted_batches(self.lengths, batch_size):
            yield idx, self.collate(idx)


def tokenize_genqa(
    examples: QAExamples,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    chat: bool | None = None,
) -> GenQASplit:
    """Prompts (context cut to ``max_length`` tokens) and answers, tokenised once."""
    chat = bool(tokenizer.chat_template) if chat is None else chat
    stop = tokenizer.eos_token_id
    if stop is None:
        raise FedpeftError("generative QA needs a tokenizer with an end-of-sequence token.")
    before, after, answer_prefix = prompt_parts(tokenizer, TASK, chat)
    head = _ids(tokenizer, [before + "Context: "], special=not chat)[0]
    contexts = tokenizer(
        examples.contexts, add_special_tokens=False, truncation=True, max_length=max_length
    )["input_ids"]
    questions = _ids(tokenizer, [f"\n\nQuestion: {q.strip()}" for q in examples.questions], False)
    tail = _ids(tokenizer, [after], special=False)[0]
    prompts = [
        np.concatenate([head, np.asarray(c, dtype=np.int64), q, tail])
        for c, q in zip(contexts, questions, strict=True)
    ]
    words = _ids(tokenizer, [answer_prefix + a[0].strip() for a in examples.answers], False)
    answers = [np.append(w, np.int64(stop)) for w in words]
    lengths = np.asarray([len(p) + len(a) for p, a in zip(prompts, answers, strict=True)])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    return GenQASplit(prompts, answers, examples, int(pad), int(stop), lengths, tokenizer)


HIDDEN_WARN = 0.05  # a share of questions whose answer the cut context hides, worth a word


def hidden_answer_warning(
    examples: QAExamples, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> str | None:
    """A warning when over ``HIDDEN_WARN`` of the questions have their first reference answer
    past the context's first ``max_length`` tokens, all that the prompt keeps: the model would
    be taught, and scored on, answers it cannot see. None otherwise (or a slow tokenizer)."""
    if not tokenizer.is_fast or not len(examples):
        return None
    offsets = tokenizer(
        examples.contexts,
        add_special_tokens=False,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
    )["offset_mapping"]
    hidden = sum(
        s[0] + len(a[0]) > (o[-1][1] if o else 0)
        for s, a, o in zip(examples.starts, examples.answers, offsets, strict=True)
    )
    n = len(examples)
    if hidden / n <= HIDDEN_WARN:
        return None
    return (
        f"{hidden} of {n} training questions ({hidden / n:.0%}) have their answer past the "
        f"first `model.max_length`={max_length} tokens of the context, all that the prompt "
        "keeps: the model is taught answers it cannot see; raise `model.max_length`"
    )
