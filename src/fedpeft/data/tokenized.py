"""Tokenise once; batch with dynamic padding; evaluate in length buckets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpeft.data.sources import RawSplit


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def model_inputs(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward (every batch kind has this method,
        so training and evaluation never name a modality's inputs)."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return inputs | {"labels": self.labels} if with_labels else inputs


@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids (unpadded, one array per example) and labels; shared, never copied."""

    input_ids: list[np.ndarray]
    labels: np.ndarray
    pad_id: int
    lengths: np.ndarray  # tokens per example, computed once
    pad_left: bool = False  # decoders: the last position is then always a real token

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, idx: np.ndarray) -> Batch:
        """A batch padded to its own longest example (dynamic padding)."""
        seqs = [self.input_ids[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            cols = slice(width - len(s), width) if self.pad_left else slice(0, len(s))
            ids[row, cols] = torch.from_numpy(s)
            mask[row, cols] = 1
        return Batch(ids, mask, torch.from_numpy(self.labels[idx]))

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 8
    ) -> Iterator[Batch]:
        """One epoch over ``indices`` in a seeded random order, with length bucketing.

        The shuffled examples are cut into chunks of ``bucket`` batches; each chunk is sorted
        by length and cut into batches, and the batches are visited in random order. Batches
        then hold similar lengths and pad little, while the order stays random.
        """
        for batch in bucketed_batches(indices, self.lengths, batch_size, rng, bucket):
            yield self.collate(batch)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """All examples, sorted by length so each batch pads little; yields (indices, batch)."""
        for idx in length_sorted_batches(self.lengths, batch_size):
            yield idx, self.collate(idx)


def bucketed_batches(
    indices: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    bucket: int = 8,
) -> list[np.ndarray]:
    """One epoch's batches of ``indices`` in a seeded random order, with length bucketing
    (see ``TokenizedSplit.train_batches``)."""
    order = rng.permutation(indices)
    chunk = batch_size * max(1, bucket)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[b] for b in rng.permutation(len(batches))]


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Every index, sorted by length (stable), cut into batches: evaluation order."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def tokenize_split(
    split: RawSplit, tokenizer: PreTrainedTokenizerBase, max_length: int, pad_left: bool = False
) -> TokenizedSplit:
    """Token ids once, unpadded. ``pad_left`` for decoder models: their classifier reads the
    last position (PEFT's prompt tuning cannot locate padding), and with rotary positions
    left padding leaves real tokens' outputs unchanged. No texts: an empty split."""
    enc = tokenizer(split.texts, truncation=True, max_length=max_length) if split.texts else {}
    ids = [np.asarray(x, dtype=np.int64) for x in enc.get("input_ids", [])]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    labels = np.asarray(split.labels, dtype=np.int64)
    return TokenizedSplit(ids, labels, int(pad), lengths, pad_left)


CUT_WARN = 0.2  # a share of texts cut at max_length that is worth a word
UNKNOWN_WARN = 0.1  # a share of tokens the tokenizer does not know that is worth a word


def reading_warnings(
    split: TokenizedSplit, tokenizer: PreTrainedTokenizerBase, max_length: int, model: str
) -> list[str]:
    """What a person should know about how the model reads their texts: many of them cut at
    ``max_length``, or many tokens unknown to the tokenizer (a script or language it does not
    cover). Empty when neither."""
    said = []
    n = len(split.lengths)
    cut = int((split.lengths >= max_length).sum()) if n else 0
    if n and cut / n > CUT_WARN:
        said.append(
            f"{cut} of {n} training texts ({cut / n:.0%}) reach `model.max_length`={max_length} "
            "tokens (longer ones are cut there); a larger `model.max_length` reads more of "
            "each (time grows with it)"
        )
    unk = tokenizer.unk_token_id
    if unk is not None and n:
        special = set(tokenizer.all_special_ids) - {unk}
        tokens = np.concatenate(split.input_ids)
        tokens = tokens[~np.isin(tokens, list(special))]
        share = float((tokens == unk).mean()) if len(tokens) else 0.0
        if share > UNKNOWN_WARN:
            said.append(
                f"{share:.0%} of the training tokens are unknown to {model}'s tokenizer (text in "
                "a script or language it does not cover?); a model whose tokenizer covers it "
                "(`model.name`) reads it better"
            )
    return said
