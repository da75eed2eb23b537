"""Image datasets (CIFAR-10, Fashion-MNIST) and the image split/batch the models consume.

Images are decoded once into ``uint8`` arrays (CIFAR-10's 60,000 JPEGs are cached as
``.npy`` under ``~/.cache/fedpeft``, read back with ``allow_pickle=False``). A batch
resizes to the model's input size, repeats grayscale to 3 channels and normalises,
``x ↦ (x/255 − mean)/std``; training batches are flipped left–right with probability ½
under the client's seeded generator.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedpeft.config import DataConfig
from fedpeft.data.cache import cached_arrays
from fedpeft.data.registry import register_dataset
from fedpeft.data.sources import ImageArrays, RawDataset, data_dirs, find_local
from fedpeft.errors import FedpeftError

CIFAR10_LABELS = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# each built-in set's images as stored: (square side, channels); batches resize them
STORED_FORMS = {"cifar10": (32, 3), "fashion_mnist": (28, 1)}
IMAGE_DATASETS = frozenset(STORED_FORMS)


def is_image_dataset(name: str) -> bool:
    return name in IMAGE_DATASETS


def stored_form(name: str) -> tuple[int, int] | None:
    """(square side, channels) of the built-in image dataset ``name``'s images as its
    loader returns them (CIFAR-10: 32 × 32 RGB; Fashion-MNIST: 28 × 28 grayscale), which
    its batches then resize to the model's side; None for any other dataset."""
    return STORED_FORMS.get(name)


def _missing(folder: str, files: list[str]) -> FedpeftError:
    where = ", ".join(str(d / folder) for d in data_dirs())
    return FedpeftError(
        f"dataset {folder} needs {', '.join(files)} in one of: {where}; "
        "set FEDPEFT_DATA_DIR to the folder holding it."
    )


def decode_jpeg_zip(path: Path, split: str, names: list[str]) -> ImageArrays:
    """Every ``<split>/<class>/*.jpg`` member of the zip, in sorted member order."""
    from PIL import Image

    index = {n: i for i, n in enumerate(names)}
    images, labels = [], []
    with zipfile.ZipFile(path) as z:
        members = sorted(
            m for m in z.namelist() if m.startswith(split + "/") and m.endswith(".jpg")
        )
        for member in members:
            label = member.split("/")[1]
            if label not in index:
                raise FedpeftError(f"{path}: member {member!r} has unknown class {label!r}.")
            with Image.open(io.BytesIO(z.read(member))) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(index[label])
    if not images:
        raise FedpeftError(f"{path} holds no {split}/<class>/*.jpg images.")
    return ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64))


def _cifar10(cfg: DataConfig, seed: int) -> RawDataset:
    files = ["cifar10_jpg.zip"]
    folder = find_local("cifar10", files)
    if folder is None:
        raise _missing("cifar10", files)
    zpath = folder / files[0]
    stat = zpath.stat()
    key = f"cifar10-{stat.st_size}-{int(stat.st_mtime)}"

    def split(name: str) -> ImageArrays:
        return cached_arrays(f"{key}-{name}", lambda: decode_jpeg_zip(zpath, name, CIFAR10_LABELS))

    return RawDataset("cifar10", split("train"), split("test"), CIFAR10_LABELS, str(folder))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped): big-endian magic, dims, ``uint8`` data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise FedpeftError(f"{path} is not an unsigned-byte IDX file.")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise FedpeftError(f"{path}: header says {dims}, file holds {body.size} bytes of data.")
    return body.reshape(dims)


def _fashion_mnist(cfg: DataConfig, seed: int) -> RawDataset:
    kinds = (("images", 3), ("labels", 1))
    files = [f"{p}-{k}-idx{n}-ubyte.gz" for p in ("train", "t10k") for k, n in kinds]
    folder = find_local("fashion_mnist", files)
    if folder is None:
        raise _missing("fashion_mnist", files)

    def split(prefix: str) -> ImageArrays:
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")[..., None]  # N, 28, 28, 1
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_MNIST_LABELS):
            raise FedpeftError(f"{folder}: {prefix} images and labels do not match.")
        return ImageArrays(images, labels)

    return RawDataset(
        "fashion_mnist", split("train"), split("t10k"), FASHION_MNIST_LABELS, str(folder)
    )


@dataclass(frozen=True)
class ImagePreprocess:
    """What a model expects: square input ``size`` and per-channel ``mean``/``std`` (in [0, 1])."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ImageBatch:
    pixel_values: torch.Tensor  # float32 (B, 3, size, size), normalised
    labels: torch.Tensor

    def to(self, device: torch.device) -> ImageBatch:
        return ImageBatch(self.pixel_values.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def model_inputs(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        inputs = {"pixel_values": self.pixel_values}
        return inputs | {"labels": self.labels} if with_labels else inputs


@dataclass(frozen=True)
class ImageSplit:
    """Images (``uint8``, N × C × H × W, shared, never copied) and labels."""

    images: torch.Tensor
    labels: np.ndarray
    preprocess: ImagePreprocess

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """One image per example (the text splits' token count has no image analogue)."""
        return np.ones(len(self.labels), dtype=np.int64)

    def collate(self, idx: np.ndarray, flip: np.ndarray | None = None) -> ImageBatch:
        x = self.images[torch.from_numpy(np.asarray(idx, dtype=np.int64))].float() / 255.0
        if flip is not None and flip.any():
            rows = torch.from_numpy(np.flatnonzero(flip))
            x[rows] = x[rows].flip(-1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.preprocess.size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        return ImageBatch(((x - mean) / std).contiguous(), torch.from_numpy(self.labels[idx]))

    def train_batches(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> Iterator[ImageBatch]:
        """One epoch over ``indices`` in a seeded random order, with seeded flips."""
        order = rng.permutation(indices)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.collate(idx, flip=rng.random(len(idx)) < 0.5)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, ImageBatch]]:
        order = np.arange(len(self.labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.collate(idx)


def image_split(arrays: ImageArrays, preprocess: ImagePreprocess) -> ImageSplit:
    """The split as one ``uint8`` tensor in channels-first order (a copy, made once)."""
    images = torch.from_numpy(np.ascontiguousarray(np.asarray(arrays.images).transpose(0, 3, 1, 2)))
    return ImageSplit(images, np.asarray(arrays.labels, dtype=np.int64), preprocess)


register_dataset("cifar10", _cifar10)
register_dataset("fashion_mnist", _fashion_mnist)
