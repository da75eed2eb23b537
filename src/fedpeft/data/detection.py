"""The detection split and batch a detector consumes, prepared once.

Every image is decoded, resized to the model's square input ``S × S`` (bilinear,
antialiased; the aspect ratio is not kept) and stored as ``uint8``; a batch normalises it,
``x ↦ (x/255 − mean)/std``. Boxes travel as DETR-style targets: ``class_labels`` and
``boxes`` as ``(cx, cy, w, h)`` divided by the image's width and height — fractions of the
image, which the square resize leaves unchanged. Crowd regions are never targets.
Training batches are flipped left–right with probability ½ under the client's seeded
generator (``cx ↦ 1 − cx``), as ``ImageSplit``'s are.

An image without any (non-crowd) box teaches the heads only "no object" and has no class
to partition by; such images are left out of the train split (COCO128 has two), kept in
the eval split. A split's ``labels`` are its images' dominant classes (``data.boxes``):
what the Dirichlet and pathological partitions skew and the client data profiles count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpeft.config import DataConfig
from fedpeft.data.boxes import Annotated, DetectionImages
from fedpeft.data.images import ImagePreprocess
from fedpeft.data.paired import resize_images
from fedpeft.data.partition import partition_indices
from fedpeft.errors import FedpeftError

log = logging.getLogger("fedpeft.data")
NATURAL_REFUSED = (
    "`data.partition = 'natural'` follows device tiers or documents, which detection images "
    "have none of; use 'dirichlet' (class mix), 'pathological' or 'iid'."
)


@dataclass(frozen=True)
class DetectionBatch:
    pixel_values: torch.Tensor  # (B, 3, S, S)
    classes: list[torch.Tensor]  # each image's box classes, int64 (k,)
    boxes: list[torch.Tensor]  # each image's boxes, (k, 4) normalised (cx, cy, w, h)

    def to(self, device: torch.device) -> DetectionBatch:
        return DetectionBatch(
            self.pixel_values.to(device),
            [c.to(device) for c in self.classes],
            [b.to(device) for b in self.boxes],
        )

    def __len__(self) -> int:
        return len(self.pixel_values)

    def model_inputs(self, with_labels: bool = True) -> dict[str, Any]:
        """``pixel_values`` and (``with_labels``) the DETR-style ``labels``: one
        ``{"class_labels", "boxes"}`` dict per image."""
        if not with_labels:
            return {"pixel_values": self.pixel_values}
        targets = [
            {"class_labels": c, "boxes": b} for c, b in zip(self.classes, self.boxes, strict=True)
        ]
        return {"pixel_values": self.pixel_values, "labels": targets}


def normalised(item: Annotated) -> tuple[np.ndarray, np.ndarray]:
    """(classes, boxes as (cx, cy, w, h) fractions of the image) of its non-crowd boxes."""
    keep = ~item.crowd
    b = item.boxes[keep].astype(np.float64)
    scale = np.asarray([item.width, item.height, item.width, item.height], dtype=np.float64)
    x0, y0, x1, y1 = (b / scale).T
    cxcywh = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)
    return item.classes[keep], cxcywh.astype(np.float32).reshape(-1, 4)


@dataclass(frozen=True)
class DetectionSplit:
    """Images resized once, with their boxes (pixels) and the targets derived from them."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    items: list[Annotated]  # each image's original size and boxes (pixels), crowd regions
    labels: np.ndarray  # each image's dominant class
    preprocess: ImagePreprocess
    num_labels: int  # the dataset's classes (the detector adds "no object")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """One image per example (the sequence length is fixed: ``Architecture.tokens``)."""
        return np.ones(len(self), dtype=np.int64)

    def collate(self, idx: np.ndarray, flip: np.ndarray | None = None) -> DetectionBatch:
        rows = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        x = self.images[rows].float() / 255.0
        flips = np.zeros(len(idx), dtype=bool) if flip is None else flip
        if flips.any():
            turned = torch.from_numpy(np.flatnonzero(flips))
            x[turned] = x[turned].flip(-1)
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        classes, boxes = [], []
        for i, turn in zip(idx, flips, strict=True):
            c, b = normalised(self.items[int(i)])
            if turn:
                b = b.copy()
                b[:, 0] = 1.0 - b[:, 0]
            classes.append(torch.from_numpy(np.ascontiguousarray(c)))
            boxes.append(torch.from_numpy(b))
        return DetectionBatch(((x - mean) / std).contiguous(), classes, boxes)

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> Iterator[DetectionBatch]:
        """One epoch over ``indices`` in a seeded random order, with seeded flips."""
        order = rng.permutation(indices)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.collate(idx, flip=rng.random(len(idx)) < 0.5)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, DetectionBatch]]:
        order = np.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.collate(idx)


def _decode(path: Path, width: int, height: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size != (width, height):
                raise FedpeftError(
                    f"image {path} is {im.size[0]}×{im.size[1]} but its annotation says "
                    f"{width}×{height}; the boxes would not fit it."
                )
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as e:
        raise FedpeftError(f"cannot read image {path} ({e}).") from None


def detection_split(
    raw: DetectionImages, preprocess: ImagePreprocess, num_labels: int, train: bool
) -> DetectionSplit:
    """The images decoded and resized to the model's input once; ``train`` leaves out the
    images without a box."""
    items = raw.items
    if train:
        items = [a for a in items if (~a.crowd).any()]
        if len(items) < len(raw.items):
            log.info("%d train images without boxes left out", len(raw.items) - len(items))
    if not items:
        raise FedpeftError("a detection split holds no images with boxes; raise the data size.")
    pixels = resize_images([_decode(a.path, a.width, a.height) for a in items], preprocess.size)
    labels = DetectionImages(items).labels
    return DetectionSplit(pixels, items, labels, preprocess, num_labels)


def partition_images(split: DetectionSplit, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Image indices per client: IID, or skewed by each image's dominant class
    (Dirichlet(α), k classes per client) as classification's partitions are."""
    if cfg.partition == "natural":
        raise FedpeftError(NATURAL_REFUSED)
    return partition_indices(split.labels, cfg, seed)
