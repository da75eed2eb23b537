"""Classification phrased as instructions, for causal LMs: prompt → label word.

Every example becomes ``prompt = template(instruction, options, text)`` and
``answer = label word + end-of-turn``, through the tokenizer's chat template when it has
one ("<|im_start|>user … <|im_end|><|im_start|>assistant\\n" for SmolLM2-Instruct) and a
plain "… \\nAnswer: positive" otherwise. Both are tokenised once. Training uses the
causal-LM loss on the answer tokens only (instruction tuning, as in FLAN — Wei et al.,
2022): ``labels`` is -100 on the prompt and on padding, so

    L = −(1/|A|) Σ_{t∈A} log p(x_t | x_<t),   A = the answer positions.

``model.max_length`` bounds the input text's tokens; template and answer come on top.
Sequences are padded on the left, so every prompt ends in the same column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpeft.data.sources import RawSplit
from fedpeft.data.tokenized import Batch, bucketed_batches, length_sorted_batches
from fedpeft.errors import FedpeftError

IGNORE = -100  # label of a position that has no loss (PyTorch's and HF's ignore_index)
_PLACEHOLDER = "\u2063FEDPEFT_TEXT\u2063"  # stands in for the text while the template renders
INSTRUCTIONS = {
    "sst2": "Classify the sentiment of this review.",
    "ag_news": "Classify the topic of this news article.",
}


@dataclass(frozen=True)
class InstructSplit:
    """Prompt ids per example, answer ids per class, class labels; tokenised once.

    Same interface as ``TokenizedSplit``; its batches carry token labels (``IGNORE``
    outside the answer), and ``collate_prompts`` gives the prompts alone for generation.
    """

    prompts: list[np.ndarray]
    labels: np.ndarray  # class ids (partitions and data profiles use them)
    answers: list[np.ndarray]  # per class: the label word's tokens + the stop token
    label_names: list[str]
    pad_id: int
    stop_id: int  # ends an answer (the end-of-turn / EOS token)
    lengths: np.ndarray  # prompt + answer tokens per example
    tokenizer: PreTrainedTokenizerBase = field(repr=False, compare=False)
    pad_left: bool = True

    def __len__(self) -> int:
        return len(self.labels)

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, token labels) of example ``i``: prompt + answer, loss on the answer."""
        prompt, answer = self.prompts[i], self.answers[int(self.labels[i])]
        ids = np.concatenate([prompt, answer])
        labels = np.concatenate([np.full(len(prompt), IGNORE, dtype=np.int64), answer])
        return ids, labels

    def collate(self, idx: np.ndarray) -> Batch:
        """Prompt + answer, left-padded to the batch's longest; labels ``IGNORE`` but on
        the answer tokens."""
        pairs = [self.sequence(int(i)) for i in idx]
        return _pad([p[0] for p in pairs], [p[1] for p in pairs], self.pad_id)

    def collate_prompts(self, idx: np.ndarray) -> Batch:
        """The prompts alone, left-padded (for generation); labels are the class ids."""
        seqs = [self.prompts[int(i)] for i in idx]
        batch = _pad(seqs, seqs, self.pad_id)
        return Batch(batch.input_ids, batch.attention_mask, torch.from_numpy(self.labels[idx]))

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 8
    ) -> Iterator[Batch]:
        """One seeded, length-bucketed epoch, exactly as ``TokenizedSplit.train_batches``."""
        for batch in bucketed_batches(indices, self.lengths, batch_size, rng, bucket):
            yield self.collate(batch)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """All examples sorted by length; yields (indices, prompt + answer batch)."""
        for idx in length_sorted_batches(self.lengths, batch_size):
            yield idx, self.collate(idx)


def _pad(seqs: list[np.ndarray], labels: list[np.ndarray], pad_id: int) -> Batch:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    out = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        cols = slice(width - len(s), width)
        ids[row, cols] = torch.from_numpy(s)
        mask[row, cols] = 1
        out[row, cols] = torch.from_numpy(lab)
    return Batch(ids, mask, out)


def instruction(dataset: str, label_names: list[str]) -> str:
    """The task sentence with the allowed answers, e.g. "Classify the sentiment of this
    review. Answer with one of: negative, positive."."""
    task = INSTRUCTIONS.get(dataset, "Classify this text.")
    return f"{task} Answer with one of: {', '.join(label_names)}."


def prompt_parts(tokenizer: PreTrainedTokenizerBase, task: str, chat: bool) -> tuple[str, str, str]:
    """(text before the input text, text after it, answer prefix) of the template."""
    user = f"{task}\n\n{_PLACEHOLDER}"
    if not chat:
        before, _, after = f"{user}\nAnswer:".partition(_PLACEHOLDER)
        return before, after, " "
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str) or rendered.count(_PLACEHOLDER) != 1:
        raise FedpeftError(
            "the tokenizer's chat template does not render a user message verbatim; "
            "instruction tuning needs one that does."
        )
    before, _, after = rendered.partition(_PLACEHOLDER)
    return before, after, ""


def tokenize_instruct(
    split: RawSplit,
    tokenizer: PreTrainedTokenizerBase,
    dataset: str,
    label_names: list[str],
    max_length: int,
    chat: bool | None = None,
) -> InstructSplit:
    """Prompt ids (text truncated to ``max_length`` tokens) and per-class answer ids, once.

    ``chat`` (default: whether the tokenizer has a chat template) picks the template.
    """
    chat = bool(tokenizer.chat_template) if chat is None else chat
    stop = tokenizer.eos_token_id
    if stop is None:
        raise FedpeftError("instruction tuning needs a tokenizer with an end-of-sequence token.")
    before, after, answer_prefix = prompt_parts(tokenizer, instruction(dataset, label_names), chat)
    head = _ids(tokenizer, [before], special=not chat)[0]
    tail = _ids(tokenizer, [after], special=False)[0]
    texts = (
        tokenizer(split.texts, add_special_tokens=False, truncation=True, max_length=max_length)
        if split.texts
        else {}  # an empty split (the tokenizer refuses no texts)
    )
    prompts = [
        np.concatenate([head, np.asarray(t, dtype=np.int64), tail])
        for t in texts.get("input_ids", [])
    ]
    words = _ids(tokenizer, [answer_prefix + name for name in label_names], special=False)
    answers = [np.append(w, np.int64(stop)) for w in words]
    labels = np.asarray(split.labels, dtype=np.int64)
    lengths = np.asarray([len(p) + len(answers[y]) for p, y in zip(prompts, labels, strict=True)])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    return InstructSplit(
        prompts, labels, answers, list(label_names), int(pad), int(stop), lengths, tokenizer
    )


def _ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], special: bool) -> list[np.ndarray]:
    enc = tokenizer(texts, add_special_tokens=special)["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in enc]
