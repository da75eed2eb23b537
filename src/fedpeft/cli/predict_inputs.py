"""What ``fedpeft predict`` classifies: texts from ``--text`` or a data file's column, or
image files (``cli.predict_images`` lists them), each with its label where the file has the
run's label column or a folder names classes; the run's model must take the kind given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpeft.data.labels import normalize_label
from fedpeft.data.sources import read_rows, require_columns, text_or_empty
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, is_vision_model
from fedpeft.server.trained import FinishedRun


@dataclass(frozen=True)
class Inputs:
    """The texts or images to predict and, from a file with the run's label column or a
    folder of class subfolders, their labels."""

    items: list[str]  # the texts, or the image paths as given
    labels: list[str | None] | None  # canonical class names (None: unlabelled row / no column)
    column: str  # the items' column: the text column, or the image column
    label_column: str
    path: Path | None = None  # the file or folder they came from
    images: list[Path] | None = None  # the image files to decode (None: the items are texts)
    folder: bool = False  # the labels are class folders' names

    @property
    def what(self) -> str:
        return "image" if self.images is not None else "text"


def takes_images(run: FinishedRun) -> bool:
    return is_vision_model(get_model_spec(run.cfg.model.name))


def check_modality(run: FinishedRun, images: bool, texts: bool) -> None:
    """Refuses images (``--image``, ``--image-column``, a folder) for a run whose model
    takes text, and texts (``--text``, ``--text-column``) for one whose model takes images."""
    model = f"run {run.root}'s model `{run.cfg.model.name}`"
    if takes_images(run) and texts:
        raise FedpeftError(
            f"{model} classifies images, not texts; give images with --image, or a folder "
            "or a table of image paths with --file (its column: --image-column)."
        )
    if not takes_images(run) and images:
        raise FedpeftError(
            f"{model} takes text, not images; give texts with --text, or a CSV, TSV, JSONL, "
            "JSON or Parquet file of texts with --file (its column: --text-column)."
        )


def text_inputs(texts: list[str], run: FinishedRun) -> Inputs:
    if any(not t.strip() for t in texts):
        raise FedpeftError("a --text is empty; give each --text a text to classify.")
    return Inputs(texts, None, run.cfg.data.text_column, run.cfg.data.label_column)


def file_inputs(
    path: Path,
    column: str | None,
    run: FinishedRun,
    what: str = "text",
    label_column: str | None = None,
) -> Inputs:
    """The cells of ``path``'s ``column`` (default: the run's ``data.text_column``, or with
    ``what = "image"`` its ``data.image_column``) and, where the file has the label column
    (``label_column``, default: the run's ``data.label_column``; ``""``: none, nothing is
    scored), their labels. A label column named explicitly must be in the file."""
    col = column or getattr(run.cfg.data, f"{what}_column")
    label_col = run.cfg.data.label_column if label_column is None else label_column
    rows = read_rows(path, (col, label_col) if label_col else (col,), setting="--file")
    require_columns(path, rows, (col,), f"name the {what} column with --{what}-column")
    if label_column:
        require_columns(path, rows, (label_col,), "name it with --label-column")
    where = [f"data file {path}, row {i + 1}" for i in range(len(rows))]
    items = [text_or_empty(row, col, w, what) for row, w in zip(rows, where, strict=True)]
    labels = None
    if label_col and any(label_col in row for row in rows):  # JSON rows: any row holds it
        labels = [
            normalize_label(row.get(label_col), w) for row, w in zip(rows, where, strict=True)
        ]
    return Inputs(items, labels, col, label_col, path)


def labels_are_ids(inputs: Inputs, names: list[str]) -> bool:
    """Whether the file's labels are class ids 0 … n−1: all whole numbers, none of them one
    of the run's class names."""
    given = {x for x in inputs.labels or [] if x is not None}
    return bool(given) and all(x.isdigit() for x in given) and not given & set(names)


def label_ids(inputs: Inputs, names: list[str]) -> np.ndarray | None:
    """Each input's class id (-1: unlabelled); None without a label column. A label is one
    of the run's class names, or — in a file whose labels are all whole numbers, none of
    them a class name (a built-in dataset's own files: SST-2's 0/1) — a class id, 0 … n−1.
    Other labels are refused."""
    if inputs.labels is None:
        return None
    index = {n: i for i, n in enumerate(names)}
    given = {x for x in inputs.labels if x is not None}
    if labels_are_ids(inputs, names):
        index = {str(i): i for i in range(len(names))}
    unknown = sorted(given - index.keys())
    if unknown and inputs.folder:
        raise FedpeftError(
            f"folder {inputs.path} has class folders {unknown[:5]} that are not among the "
            f"run's classes {names[:10]}; rename or remove them, or put the images in one "
            "folder without subfolders to predict without scoring."
        )
    if unknown:
        raise FedpeftError(
            f"data file {inputs.path} has labels {unknown[:5]} in `{inputs.label_column}` that "
            f"are not among the run's classes {names[:10]} (nor, all whole numbers, its class "
            f"ids 0 … {len(names) - 1}); fix them, or pass --label-column '' to predict "
            "without scoring."
        )
    return np.asarray([-1 if x is None else index[x] for x in inputs.labels], dtype=np.int64)
