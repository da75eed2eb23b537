"""Object-detection datasets in their raw form: images with labelled boxes, read from
Pascal VOC XML (BCCD) or a COCO ``instances`` JSON (COCO128), checked as untrusted input.

Boxes are kept as ``(x0, y0, x1, y1)`` in the image's pixels. What is refused, with the
file and the object named: a file that does not parse, a missing or non-numeric field, an
unknown class, an inverted box (``x1 < x0`` or ``y1 < y0``, COCO: a negative width or
height), a box reaching more than ``EDGE_TOLERANCE`` px outside its image (within it, a box
is clipped to the image), a DOCTYPE in an XML file (no entity expansion is ever run).
Zero-size boxes (``x1 == x0`` or ``y1 == y0``; BCCD has two) carry no area to detect and
are dropped, counted in the log. COCO's crowd regions (``iscrowd = 1``) are kept apart:
never trained on, and ignored by the evaluation as COCO's own does.

Splits: BCCD's own ImageSets (``trainval.txt`` trains, ``test.txt`` evaluates; ``val``
is part of ``trainval``, as in Pascal VOC). COCO128 is one folder of 128 images; a fixed
seeded quarter of them (32 images, the same whatever ``run.seed``) evaluates. Classes:
BCCD's three in the order RBC, WBC, Platelets; COCO's 80 categories in id order.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data.sources import (
    Annotated,
    DetectionImages,
    RawDataset,
    data_dirs,
    find_local,
)
from fedpeft.errors import FedpeftError

log = logging.getLogger("fedpeft.data")

BCCD_LABELS = ["RBC", "WBC", "Platelets"]
EDGE_TOLERANCE = 1.0  # px a box may reach past the image edge (float rounding); clipped
COCO128_EVAL_SEED = 0x0C0  # the fixed draw of COCO128's evaluation quarter
DETECTION_DATASETS = ("bccd", "coco128")


class _Boxes:
    """Boxes of one image being read: checked, zero-size ones counted and dropped."""

    def __init__(self, where: Path, width: int, height: int) -> None:
        self.where, self.width, self.height = where, width, height
        self.rows: list[tuple[float, float, float, float]] = []
        self.classes: list[int] = []
        self.crowd: list[bool] = []
        self.dropped = 0

    def add(self, box: tuple[float, float, float, float], cls: int, crowd: bool, what: str) -> None:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) for v in box):
            raise FedpeftError(f"{self.where}: {what} has a non-finite coordinate {list(box)}.")
        if x1 < x0 or y1 < y0:
            raise FedpeftError(
                f"{self.where}: {what} is inverted ({list(box)}: the maximum is below the "
                "minimum); fix the annotation."
            )
        t = EDGE_TOLERANCE
        if x0 < -t or y0 < -t or x1 > self.width + t or y1 > self.height + t:
            raise FedpeftError(
                f"{self.where}: {what} {list(box)} lies outside its {self.width}×{self.height} "
                "image; fix the annotation."
            )
        if x1 == x0 or y1 == y0:
            self.dropped += 1  # no area: nothing to detect
            return
        w, h = self.width, self.height
        self.rows.append((max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))))
        self.classes.append(cls)
        self.crowd.append(crowd)

    def annotated(self, path: Path) -> Annotated:
        return Annotated(
            path,
            self.width,
            self.height,
            np.asarray(self.rows, dtype=np.float32).reshape(-1, 4),
            np.asarray(self.classes, dtype=np.int64),
            np.asarray(self.crowd, dtype=bool),
        )


def _number(node: ET.Element, tag: str, where: Path, what: str) -> float:
    text = node.findtext(tag)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise FedpeftError(
            f"{where}: {what} needs a finite numeric <{tag}>, found {text!r}; fix the annotation."
        )
    return value


def read_voc(path: Path, labels: list[str], images: Path) -> tuple[Annotated, int]:
    """One Pascal VOC XML file: (its image and boxes, zero-size boxes dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FedpeftError(f"cannot read annotation file {path} ({e}).") from None
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise FedpeftError(f"{path}: a DOCTYPE or ENTITY declaration is not accepted in VOC XML.")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise FedpeftError(f"{path} is not valid XML ({e}); fix or remove the file.") from None
    filename, size = root.findtext("filename"), root.find("size")
    if root.tag != "annotation" or not filename or size is None:
        raise FedpeftError(
            f"{path} is not a Pascal VOC annotation (<annotation> with <filename> and <size>)."
        )
    width, height = (_number(size, t, path, "<size>") for t in ("width", "height"))
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise FedpeftError(f"{path}: <size> should be positive whole pixels, got {width}×{height}.")
    boxes = _Boxes(path, int(width), int(height))
    index = {n: i for i, n in enumerate(labels)}
    for k, obj in enumerate(root.iter("object")):
        name, bnd = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        what = f"object {k + 1} ({name or 'unnamed'})"
        if name not in index:
            raise FedpeftError(
                f"{path}: {what} has class {name!r}; expected one of: {', '.join(labels)}."
            )
        if bnd is None:
            raise FedpeftError(f"{path}: {what} has no <bndbox>; fix the annotation.")
        box = tuple(_number(bnd, t, path, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.add(box, index[name], False, what)  # type: ignore[arg-type]
    return boxes.annotated(images / Path(filename).name), boxes.dropped


def _ids(folder: Path, name: str) -> list[str]:
    path = folder / "ImageSets" / "Main" / f"{name}.txt"
    try:
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise FedpeftError(f"cannot read the split list {path} ({e}).") from None
    ids = [i for i in ids if i]
    if not ids or any("/" in i or "\\" in i or i.startswith(".") for i in ids):
        raise FedpeftError(f"{path} should list image ids (file names without .xml), one a line.")
    return ids


def load_voc(folder: Path, labels: list[str], split: str) -> DetectionImages:
    """A VOC folder's ``ImageSets/Main/<split>.txt`` images with their boxes."""
    items, dropped = [], 0
    for image_id in _ids(folder, split):
        item, n = read_voc(
            folder / "Annotations" / f"{image_id}.xml", labels, folder / "JPEGImages"
        )
        items.append(item)
        dropped += n
    if dropped:
        log.info("%s %s: %d zero-size boxes dropped", folder, split, dropped)
    return DetectionImages(items)


def read_coco(path: Path, images: Path) -> tuple[list[Annotated], list[str]]:
    """A COCO ``instances`` JSON: every image with its boxes (in the file's image order)
    and the category names in id order (class i is the i-th smallest category id)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted((int(c["id"]), str(c["name"])) for c in doc["categories"])
        images_list = [
            (int(i["id"]), str(i["file_name"]), i["width"], i["height"]) for i in doc["images"]
        ]
        sizes = {i: (name, w, h) for i, name, w, h in images_list}
        anns = list(doc["annotations"])
        if len(sizes) != len(images_list) or len({c for c, _ in cats}) != len(cats):
            raise ValueError("an image or category id is listed twice")
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise FedpeftError(
            f"{path} is not a COCO instances file (categories, images and annotations with "
            f"ids; {type(e).__name__}: {e})."
        ) from None
    index = {cid: i for i, (cid, _) in enumerate(cats)}
    boxes: dict[int, _Boxes] = {}
    for image_id, (_, w, h) in sizes.items():
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise FedpeftError(f"{path}: image {image_id} has size {w}×{h}; expected pixels.")
        boxes[image_id] = _Boxes(path, w, h)
    for k, ann in enumerate(anns):
        _coco_box(ann, k, index, boxes, path)
    dropped = sum(b.dropped for b in boxes.values())
    if dropped:
        log.info("%s: %d zero-size boxes dropped", path, dropped)
    items = [boxes[i].annotated(images / Path(name).name) for i, (name, _, _) in sizes.items()]
    return items, [name for _, name in cats]


def _coco_box(
    ann: object, k: int, index: dict[int, int], boxes: dict[int, _Boxes], path: Path
) -> None:
    what = f"annotation {k + 1}"
    try:
        if not isinstance(ann, dict):
            raise TypeError("not an object")
        image, cat, bbox = int(ann["image_id"]), int(ann["category_id"]), ann["bbox"]
        x, y, w, h = (float(v) for v in bbox)
        crowd = ann.get("iscrowd", 0)
        if isinstance(crowd, str) or crowd not in (0, 1):  # "0" would read as a crowd
            raise ValueError("iscrowd")
    except (KeyError, TypeError, ValueError, OverflowError):
        raise FedpeftError(
            f"{path}: {what} needs image_id, category_id and bbox [x, y, width, height] "
            "(and an `iscrowd` of 0 or 1, where given)."
        ) from None
    if image not in boxes or cat not in index:
        raise FedpeftError(f"{path}: {what} names image {image} or category {cat}, not listed.")
    if w < 0 or h < 0:
        raise FedpeftError(f"{path}: {what} has a negative width or height ({bbox}).")
    boxes[image].add((x, y, x + w, y + h), index[cat], bool(crowd), f"{what} (image {image})")


def _folder(name: str, files: list[str]) -> Path:
    folder = find_local(name, files)
    if folder is None:
        where = ", ".join(str(d / name) for d in data_dirs())
        raise FedpeftError(
            f"dataset {name} needs {', '.join(files)} in one of: {where}; set "
            f"FEDPEFT_DATA_DIR to the folder holding {name}."
        )
    return folder


def load_bccd(cfg: DataConfig, seed: int) -> RawDataset:
    root = _folder("bccd", ["BCCD/ImageSets/Main/trainval.txt", "BCCD/ImageSets/Main/test.txt"])
    folder = root / "BCCD"
    train = load_voc(folder, BCCD_LABELS, "trainval")
    test = load_voc(folder, BCCD_LABELS, "test")
    return RawDataset("bccd", train, test, list(BCCD_LABELS), str(folder))


def load_coco128(cfg: DataConfig, seed: int) -> RawDataset:
    ann = "annotations/instances_train2017.json"
    folder = _folder("coco128", [ann])
    items, names = read_coco(folder / ann, folder / "images" / "train2017")
    order = np.random.default_rng(COCO128_EVAL_SEED).permutation(len(items))
    held = np.sort(order[: len(items) // 4])
    kept = np.sort(order[len(items) // 4 :])
    all_images = DetectionImages(items)
    return RawDataset("coco128", all_images.take(kept), all_images.take(held), names, str(folder))
