"""``fedpeft predict`` on images: files, a folder or a table of paths, decoded and batched
as the run's own eval images were.

Where the images come from (the listing of custom training images, ``data.image_files``):

- ``--image PATH`` (repeatable): each must be a regular file.
- ``--file FOLDER`` holding subfolders: a folder of class subfolders, read as training reads
  one (``folder_images``: every image under ``FOLDER/<class>/`` at any depth, hidden entries
  left out, images loose at the top left out with a warning). The folder names are the
  labels, scored against the run's classes; one that is not a class is refused.
- ``--file FOLDER`` without subfolders: every image directly in it, unlabelled.
- ``--file TABLE`` (CSV, TSV, JSONL, JSON or Parquet): the paths in ``--image-column``
  (default: the run's ``data.image_column``), relative to the table's folder or absolute,
  and the labels in the run's ``data.label_column`` when the table has it.

Decoding is the custom images' (``decode_images``, which refuses a file that does not
decode), at the run's ``image_form``: a custom-image run's model side in RGB, a built-in
set's stored form (CIFAR-10 32 × 32 RGB, Fashion-MNIST 28 × 28 grayscale). The decoded
images then become the run's eval split (``image_data``: resized and normalised per batch
as the run's own), so the run's eval folder gives the run's final figures, and a photo
reaches a CIFAR-10 model as small as its training images were.

Images are decoded and predicted ``CHUNK`` at a time, rounded to whole batches, so the
batches — and every logit — are those of one pass over all of them, while memory holds
one chunk (1,024 × side² × 3 bytes: 150 MB at 224 px) however many images there are.
Nothing is cached: a cache would copy every photo to disk for a single pass.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedpeft.cli.predict_inputs import Inputs, file_inputs
from fedpeft.data.custom_images import decode_images
from fedpeft.data.image_files import (
    IMAGE_SUFFIXES,
    folder_images,
    has_subfolders,
    loose_images,
    table_paths,
)
from fedpeft.errors import FedpeftError
from fedpeft.server.evaluate import Advance, predict_logits
from fedpeft.server.task import FederatedData
from fedpeft.server.trained import FinishedRun, image_data, image_form

CHUNK = 1024  # images decoded at a time (rounded down to whole batches, at least one)


def image_inputs(given: list[str], run: FinishedRun) -> Inputs:
    """``--image`` paths, each a regular file (a folder goes to ``--file``)."""
    for name in given:
        path = Path(name)
        if path.is_dir():
            raise FedpeftError(f"--image {name} is a folder; give a folder with --file.")
        if not path.exists():
            raise FedpeftError(f"--image {name} does not exist; check the path.")
        if not path.is_file():
            raise FedpeftError(
                f"--image {name} is not a regular file (a pipe, a device or a broken link); "
                "give an image file."
            )
    data = run.cfg.data
    return Inputs(
        list(given), None, data.image_column, data.label_column, None, list(map(Path, given))
    )


def file_image_inputs(
    path: Path, column: str | None, run: FinishedRun, label_column: str | None = None
) -> Inputs:
    """``--file`` for an image run: a folder (of class subfolders, or of loose images) or a
    table of image paths."""
    if path.is_dir():
        options = {"--image-column": column, "--label-column": label_column}
        named = " and ".join(o for o, v in options.items() if v is not None)
        if named:
            raise FedpeftError(
                f"--file {path} is a folder: its class subfolders are the labels and it has no "
                f"columns, so {named} does not apply; leave it out, or give a table of paths."
            )
        return folder_inputs(path, run)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise FedpeftError(
            f"--file {path} is an image; give single images with --image, a folder or a "
            "table of image paths with --file."
        )
    if column is not None and column == run.cfg.data.label_column:
        raise FedpeftError(
            f"--image-column {column!r} is the run's label column; name the column of image paths."
        )
    inputs = file_inputs(path, column, run, "image", label_column)
    return replace(inputs, images=table_paths(path, inputs.items, inputs.column))


def folder_inputs(root: Path, run: FinishedRun) -> Inputs:
    """A folder's images: with subfolders, each a class (the labels); without, every image
    in it, unlabelled."""
    data = run.cfg.data
    if not has_subfolders(root):
        paths = loose_images(root)
        return Inputs(
            [str(p) for p in paths], None, data.image_column, data.label_column, root, paths
        )
    files = folder_images(root)
    labels: list[str | None] = list(files.labels)
    return Inputs(
        [str(p) for p in files.paths],
        labels,
        data.image_column,
        data.label_column,
        root,
        files.paths,
        folder=True,
    )


def no_images(run: FinishedRun) -> FederatedData:
    """The run's data with no image: what the final model is built from (it takes only the
    class names from it) before the images come, a chunk at a time."""
    side, channels = image_form(run)
    return image_data(run, np.zeros((0, side, side, channels), dtype=np.uint8))


def image_logits(
    run: FinishedRun,
    model: nn.Module,
    files: list[Path],
    batch_size: int,
    device: torch.device,
    advance: Advance | None = None,
) -> torch.Tensor:
    """Logits (float32, CPU) of every file, in order: decoded at the run's ``image_form``
    and predicted through the run's eval split, ``CHUNK`` images (whole batches) at a time."""
    side, channels = image_form(run)
    step = batch_size * max(1, CHUNK // batch_size)
    out = []
    for start in range(0, len(files), step):
        images = decode_images(files[start : start + step], side, channels)
        split = image_data(run, images).eval
        out.append(predict_logits(model, split, batch_size, device, advance))
    return torch.cat(out)
