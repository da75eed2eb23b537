"""Image–text splits and batches for image–text matching (``MatchSplit``) and visual question
answering (``VQASplit``), prepared once.

Each distinct image is resized once to the model's input (bilinear with antialiasing,
grayscale repeated to RGB) and kept as ``uint8``; a batch normalises it,
``x ↦ (x/255 − mean)/std``. Texts are tokenised once. There are no random flips: a flip
would swap "left" and "right" in DAQUAR's questions and answers.

A matching batch holds its distinct images and distinct texts once each, with ``match``,
the (images × texts) 0/1 matrix of the pairs it holds: CIFAR-10's captions repeat
across a batch ("a photo of a cat."), and one DAQUAR image has several questions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedpeft.config import DataConfig
from fedpeft.data.images import ImagePreprocess
from fedpeft.data.pairs import ImageTexts
from fedpeft.data.partition import partition_indices
from fedpeft.errors import FedpeftError


@dataclass(frozen=True)
class MatchBatch:
    pixel_values: torch.Tensor  # (I, 3, S, S): the batch's distinct images
    input_ids: torch.Tensor  # (T, L): its distinct texts, padded on the right
    attention_mask: torch.Tensor
    match: torch.Tensor  # (I, T) float: 1 where image i and text t form a pair
    pairs: int

    def to(self, device: torch.device) -> MatchBatch:
        return MatchBatch(
            self.pixel_values.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.match.to(device),
            self.pairs,
        )

    def __len__(self) -> int:
        return self.pairs

    def model_inputs(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        inputs = {
            "pixel_values": self.pixel_values,
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
        }
        return inputs | {"match": self.match} if with_labels else inputs


@dataclass(frozen=True)
class VQABatch:
    input_ids: torch.Tensor  # (B, L) questions, padded on the right
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor  # (B, 3, S, S)
    answers: torch.Tensor  # (B,) answer class, -1 outside the vocabulary
    num_labels: int

    def to(self, device: torch.device) -> VQABatch:
        return VQABatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.pixel_values.to(device),
            self.answers.to(device),
            self.num_labels,
        )

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def labels(self) -> torch.Tensor:
        """ViLT's VQA targets: a score per answer, here one-hot (DAQUAR has one answer; an
        answer outside the vocabulary is a row of zeros)."""
        out = torch.zeros(len(self), self.num_labels, device=self.answers.device)
        known = self.answers >= 0
        out[known, self.answers[known]] = 1.0
        return out

    def model_inputs(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        side = self.pixel_values.shape[-1]
        inputs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": torch.zeros_like(self.input_ids),
            "pixel_values": self.pixel_values,
            "pixel_mask": self.pixel_values.new_ones(len(self), side, side, dtype=torch.long),
        }
        return inputs | {"labels": self.labels} if with_labels else inputs


@dataclass(frozen=True)
class PairSplit:
    """Pairs over distinct images (resized once) and texts (tokenised once)."""

    images: torch.Tensor  # uint8 (n_images, 3, S, S)
    image: np.ndarray  # each pair's row of ``images``
    input_ids: list[np.ndarray]  # each distinct text's tokens
    text: np.ndarray  # each pair's distinct text
    labels: np.ndarray  # each pair's class (VQA: answer, -1 outside the vocabulary)
    preprocess: ImagePreprocess
    pad_id: int
    image_tokens: int  # tokens an image adds to the model's sequence (ViLT), else 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Each pair's sequence length: its text's tokens (and a ViLT image's patches)."""
        counts = np.asarray([len(t) for t in self.input_ids], dtype=np.int64)
        return counts[self.text] + self.image_tokens

    def pixels(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[torch.from_numpy(np.asarray(rows, dtype=np.int64))].float() / 255.0
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def tokens(self, texts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of ``texts``, padded on the right to the longest."""
        seqs = [self.input_ids[int(t)] for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.from_numpy(s)
            mask[row, : len(s)] = 1
        return ids, mask

    def collate(self, idx: np.ndarray) -> MatchBatch | VQABatch:
        raise NotImplementedError

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> Iterator[MatchBatch | VQABatch]:
        """One epoch over ``indices`` in a seeded random order."""
        order = rng.permutation(indices)
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start : start + batch_size])

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, MatchBatch | VQABatch]]:
        order = np.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.collate(idx)


@dataclass(frozen=True)
class MatchSplit(PairSplit):
    def collate(self, idx: np.ndarray) -> MatchBatch:
        rows, image_col = np.unique(self.image[idx], return_inverse=True)
        texts, text_col = np.unique(self.text[idx], return_inverse=True)
        match = torch.zeros(len(rows), len(texts))
        match[torch.from_numpy(image_col), torch.from_numpy(text_col)] = 1.0
        ids, mask = self.tokens(texts)
        return MatchBatch(self.pixels(rows), ids, mask, match, len(idx))

    def relevance(self) -> np.ndarray:
        """(distinct images × distinct texts) bool: which pairs the split holds."""
        out = np.zeros((len(self.images), len(self.input_ids)), dtype=bool)
        out[self.image, self.text] = True
        return out


@dataclass(frozen=True)
class VQASplit(PairSplit):
    num_labels: int = 0

    def collate(self, idx: np.ndarray) -> VQABatch:
        ids, mask = self.tokens(self.text[idx])
        answers = torch.from_numpy(self.labels[idx])
        return VQABatch(ids, mask, self.pixels(self.image[idx]), answers, self.num_labels)


def resize_images(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """``uint8`` (N, 3, size, size): each image resized (bilinear, antialiased), grayscale
    repeated to RGB."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, img in enumerate(images):
        x = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float()  # a copy (mmap)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out[i] = x[0].round().clamp(0, 255).to(torch.uint8)
    return out


def pair_split(
    raw: ImageTexts,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    preprocess: ImagePreprocess,
    vqa_labels: int | None = None,
    image_tokens: int = 0,
) -> MatchSplit | VQASplit:
    """The pairs' distinct images resized and distinct texts tokenised, once; a ``VQASplit``
    over ``vqa_labels`` answers when given, else a ``MatchSplit``."""
    if len(raw) == 0:
        raise FedpeftError("an image–text split holds no pairs; raise `data.train_size`.")
    rows, image = np.unique(raw.image, return_inverse=True)
    distinct = list(dict.fromkeys(raw.texts))
    index = {t: i for i, t in enumerate(distinct)}
    enc = tokenizer(distinct, truncation=True, max_length=max_length)
    ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    text = np.asarray([index[t] for t in raw.texts], dtype=np.int64)
    pixels = resize_images([raw.images[int(r)] for r in rows], preprocess.size)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    labels = np.asarray(raw.labels, dtype=np.int64)
    image = image.astype(np.int64)
    if vqa_labels is None:
        return MatchSplit(pixels, image, ids, text, labels, preprocess, pad, image_tokens)
    return VQASplit(pixels, image, ids, text, labels, preprocess, pad, image_tokens, vqa_labels)


def partition_pairs(split: PairSplit, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Pair indices per client: ``natural`` gives each client whole images (a seeded
    shuffle of the images cut into ``num_clients`` near-equal runs), the others split by
    class as for classification (IID, Dirichlet(α), k classes per client)."""
    k = cfg.num_clients
    if cfg.partition != "natural":
        return partition_indices(split.labels, cfg, seed)
    images = np.unique(split.image)
    if len(images) < k:
        raise FedpeftError(
            f"{len(images)} images cannot give `data.num_clients`={k} clients whole images "
            "each; lower `data.num_clients`, raise `data.train_size` or use 'iid'."
        )
    shuffled = np.random.default_rng([seed, 0x1A6]).permutation(images)
    return [np.flatnonzero(np.isin(split.image, group)) for group in np.array_split(shuffled, k)]
