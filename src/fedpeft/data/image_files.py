"""A person's image files, found in either layout people keep them in, and refused with one
sentence where the layout is broken.

- **A folder of class subfolders** (torchvision's ImageFolder layout): ``root/<class>/…``;
  every file under a class folder, at any depth, whose suffix is an image's
  (``IMAGE_SUFFIXES``, any case) is one example of that class. Hidden entries (a name
  starting with ``.``: ``.DS_Store``, macOS's ``._photo.jpg``, ``.ipynb_checkpoints``) are
  left out; other files are skipped with a warning that counts and names them. Refused:
  a missing or empty folder, a class folder holding no image, two folders naming one class
  (``1`` and ``01``), a link back to a folder above it (a symlink loop) and an entry that
  is neither a file nor a folder (a broken link, a pipe). Images directly in ``root``
  belong to no class: they are left out with a warning.
- **A table** read by ``read_table`` (CSV, TSV, JSONL, JSON or Parquet) with a column of
  image paths (``data.image_column``), relative to the table's folder, absolute or from
  ``~`` (expanded as in ``data.train_file``), and a label column. A path that does not
  name a file is refused, with its row.
- **A folder of loose images** (no subfolders), for prediction only (``fedpeft predict``):
  every image directly in it, of no known class.

Nothing here opens an image: decoding (``custom_images``) opens only the regular files
found here, so a pipe named ``x.jpg`` cannot block a run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data.labels import normalize_label
from fedpeft.data.sources import TABLE_SUFFIXES, read_table
from fedpeft.errors import FedpeftError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_SHOWN = 3  # file names a message lists before "and N more"


@dataclass(frozen=True)
class ImageFiles:
    """Image files and each one's class (canonical, as ``normalize_label`` spells it)."""

    paths: list[Path]
    labels: list[str]
    where: str  # "data folder X" or "data file X", for messages
    folder: bool  # listed from class subfolders (else from a table)

    def take(self, indices: np.ndarray) -> ImageFiles:
        """The files at ``indices``, in that order."""
        picked = [int(i) for i in indices]
        return ImageFiles(
            [self.paths[i] for i in picked],
            [self.labels[i] for i in picked],
            self.where,
            self.folder,
        )


def list_images(path: Path, cfg: DataConfig) -> ImageFiles:
    """The images of ``data.train_file`` or ``eval_file``: a folder or a table."""
    if path.is_dir():
        return folder_images(path)
    if not path.exists():
        raise FedpeftError(
            f"data path {path} does not exist; point `data.train_file`/`eval_file` at a folder "
            "of class subfolders or at a table of image paths."
        )
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise FedpeftError(
            f"data path {path} is neither a folder of class subfolders nor a table of image "
            f"paths ({', '.join(TABLE_SUFFIXES)}); unpack an archive into a folder first."
        )
    return table_images(path, cfg)


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def folder_images(root: Path) -> ImageFiles:
    """Every image under ``root/<class>/``, class folders in name order, files sorted."""
    root_id = _dir_id(root)
    classes: list[os.DirEntry[str]] = []
    loose: list[os.DirEntry[str]] = []
    for entry in _scan(root):
        (classes if _is_dir(entry) else loose).append(entry)
    _refuse_special(loose)
    stray = [e.name for e in loose if Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        found = f" but {len(stray)} loose image(s)" if stray else ""
        raise FedpeftError(
            f"data folder {root} holds no class subfolders{found}; put each class's images in "
            f"{root}/<class>/."
        )
    if stray:
        log.warning(
            "data folder %s: %d image(s) directly in it belong to no class and are left out "
            "(%s); move them into a class subfolder",
            root,
            len(stray),
            _listing(stray),
        )
    paths: list[Path] = []
    labels: list[str] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for folder in classes:
        name = normalize_label(folder.name, f"data folder {root}, class folder {folder.name!r}")
        if name is None:
            raise FedpeftError(f"data folder {root} has a class folder with a blank name.")
        if name in seen:
            raise FedpeftError(
                f"data folder {root}: class folders {seen[name]!r} and {folder.name!r} both name "
                f"class {name!r}; merge them."
            )
        seen[name] = folder.name
        images, others = _walk(Path(folder.path), root_id)
        if not images:
            raise FedpeftError(
                f"class folder {folder.path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add some or remove the folder."
            )
        paths += images
        labels += [name] * len(images)
        skipped += others
    if skipped:
        log.warning(
            "data folder %s: skipped %d file(s) that are not images by their suffix (%s)",
            root,
            len(skipped),
            _listing(skipped),
        )
    return ImageFiles(paths, labels, f"data folder {root}", folder=True)


def _walk(top: Path, root_id: tuple[int, int]) -> tuple[list[Path], list[str]]:
    """Image files under ``top`` (sorted) and the other files' paths; a folder that is one
    of its own ancestors (a symlink loop) is refused."""
    images: list[Path] = []
    others: list[str] = []
    stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(top, (root_id, _dir_id(top)))]
    while stack:
        folder, ancestors = stack.pop()
        entries = _scan(folder)
        _refuse_special(entries)
        for entry in entries:
            path = Path(entry.path)
            if _is_dir(entry):
                ident = _dir_id(path)
                if ident in ancestors:
                    raise FedpeftError(
                        f"{path} leads back to a folder above it (a symlink loop); remove the link."
                    )
                stack.append((path, (*ancestors, ident)))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                others.append(str(path))
    return sorted(images), others


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    """The folder's entries by name, hidden ones (``.name``) left out."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise FedpeftError(f"folder {folder} cannot be read ({e.strerror}).") from None
    return sorted(entries, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links; a link loop raises (ELOOP)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _refuse_special(entries: list[os.DirEntry[str]]) -> None:
    """Refuses an entry that is neither a folder nor a regular file (after links)."""
    for entry in entries:
        if not _is_dir(entry) and not _is_file(entry):
            raise FedpeftError(
                f"{entry.path} is neither a file nor a folder (a broken link, a link loop, a "
                "pipe or a device); remove it."
            )


def _dir_id(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise FedpeftError(f"folder {path} cannot be read ({e.strerror}).") from None
    return st.st_dev, st.st_ino


def table_images(path: Path, cfg: DataConfig) -> ImageFiles:
    """The table's image paths (``data.image_column``; relative ones from the table's
    folder) and labels (``data.label_column``); every path must name a file."""
    if cfg.image_column == cfg.label_column:
        raise FedpeftError(
            f"`data.image_column` and `data.label_column` are both {cfg.image_column!r}; name "
            "the column of image paths and the column of labels."
        )
    cells, labels = read_table(path, cfg.image_column, cfg.label_column, kind="image")
    paths = table_paths(path, cells, cfg.image_column)
    return ImageFiles(paths, labels, f"data file {path}", folder=False)


def table_paths(table: Path, cells: list[str], column: str) -> list[Path]:
    """The files that a table's ``column`` of image paths names, relative ones from the
    table's folder; a cell that names no regular file is refused, with its row."""
    paths: list[Path] = []
    missing: list[str] = []
    for row, cell in enumerate(cells, start=1):
        given = Path(cell.strip()).expanduser()  # `~` as in `data.train_file`
        full = given if given.is_absolute() else table.parent / given
        if not cell.strip() or not full.is_file():
            missing.append(f"row {row}: {cell!r}")
        paths.append(full)
    if missing:
        raise FedpeftError(
            f"data file {table}: {len(missing)} image path(s) in `{column}` name no "
            f"file ({_listing(missing)}); paths are relative to {table.parent} or absolute."
        )
    return paths


def has_subfolders(root: Path) -> bool:
    """Whether ``root`` holds a folder (hidden ones aside): then its folders are classes."""
    return any(_is_dir(e) for e in _scan(root))


def loose_images(root: Path) -> list[Path]:
    """Every image directly in ``root``, a folder without subfolders (``has_subfolders``),
    sorted by name: images to classify, of no known class. Hidden entries are left out and
    other files skipped with a warning, as in class folders; a folder with no image, and
    an entry that is not a regular file, are refused."""
    entries = [e for e in _scan(root) if not _is_dir(e)]
    _refuse_special(entries)
    images = [Path(e.path) for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
    others = [e.name for e in entries if Path(e.name).suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        found = f" (only {_listing(others)})" if others else ""
        raise FedpeftError(
            f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}){found}; point at a "
            "folder of images."
        )
    if others:
        log.warning(
            "folder %s: skipped %d file(s) that are not images by their suffix (%s)",
            root,
            len(others),
            _listing(others),
        )
    return images
