"""Object detection as a run's task (``model.task = "detect"``): what it supports, checked
before anything loads, its splits, and its evaluation by mean average precision.

A YOLOS detector (``models/yolos.py``) on BCCD or COCO128 (``data/boxes.py``): PEFT on the
ViT backbone (LoRA, DoRA on its attention; BitFit on its biases), the class and box heads
trained and sent with every update. Or CenterNet on the pretrained EfficientNet-Lite0 trunk
(``models/lite_detect.py``): LoRA/DoRA on the trunk's 1×1 convolutions, BitFit on its
BatchNorm biases, the pyramid and branches (``detection_head``) trained and sent; it
returns its top peaks in YOLOS' output form, so the evaluation below serves both. Clients
hold whole images, IID or skewed by each image's dominant class (Dirichlet(α) or k classes
per client).

Evaluation: every detection token is one prediction — its best class other than "no
object", scored by that class's softmax probability (as ``transformers``'
``post_process_object_detection``), its box scaled to the original image's pixels — is scored
against the image's boxes by COCO's own evaluation (``pycocotools``'
``COCOeval``, bounding boxes; crowd regions ignored as COCO ignores them): ``map_50`` (AP
at IoU 0.5), ``map_50_95`` (AP averaged over IoU 0.50:0.05:0.95, COCO's primary metric),
``map_75`` and ``mar_100`` (recall with up to 100 detections an image); -1 when the split
holds no box. (``torchmetrics``' ``MeanAveragePrecision`` wraps the same ``COCOeval``
but needs ``torchvision``, which fedpeft does not install.) ``accuracy`` — what the round
loop, summary and allocation follow — is ``map_50_95``; ``loss`` is DETR's set loss.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedpeft.config import ExperimentConfig
from fedpeft.data import RawDataset
from fedpeft.data.boxes import DETECTION_DATASETS, DetectionImages
from fedpeft.data.detection import NATURAL_REFUSED, DetectionSplit, detection_split
from fedpeft.errors import FedpeftError
from fedpeft.models import ModelSpec, image_preprocess, load_model_config
from fedpeft.models.lite_detect import CENTERNET_FAMILY, centernet_config
from fedpeft.models.vision import check_lite0_packages, is_tiny
from fedpeft.models.yolos import DETECTION_FAMILIES, check_input_size, tiny_yolos_config
from fedpeft.peft import methods_for, supported_methods
from fedpeft.server.qa import check_catalogue

DETECT_TASK: Literal["detect"] = "detect"


def offered(family: str = "yolos") -> list[str]:
    """The methods offered for detection on a detector family."""
    allowed = methods_for(DETECT_TASK)
    return [m for m in supported_methods(family) if m in allowed]


def supported_detection() -> str:
    sets = ", ".join(DETECTION_DATASETS)
    per_family = (f"{f} models on {sets} with {', '.join(offered(f))}" for f in DETECTION_FAMILIES)
    return f"detect: {'; '.join(per_family)}"


def check_detect(cfg: ExperimentConfig, spec: ModelSpec) -> None:
    """Refuses, before anything loads, what object detection does not support."""
    task = f"`model.task` {DETECT_TASK!r}"
    if spec.family not in DETECTION_FAMILIES:
        what = "an unregistered hub model" if spec.family == "auto" else f"a {spec.family} model"
        raise FedpeftError(
            f"{task} needs a detector, but `{spec.name}` is {what}; supported: "
            f"{supported_detection()}."
        )
    if cfg.data.dataset not in DETECTION_DATASETS:
        raise FedpeftError(
            f"{task} needs images with boxes, but `data.dataset` is {cfg.data.dataset!r}; use "
            f"one of: {', '.join(DETECTION_DATASETS)}."
        )
    if cfg.peft.method not in offered(spec.family):
        raise FedpeftError(
            f"`peft.method` {cfg.peft.method!r} is not offered for {task}; supported: "
            f"{supported_detection()}."
        )
    check_catalogue(cfg, offered(spec.family), DETECT_TASK, supported_detection())
    if cfg.data.partition == "natural":
        raise FedpeftError(NATURAL_REFUSED)
    if cfg.privacy.mode == "dpsgd":
        raise FedpeftError(
            "`privacy.mode = 'dpsgd'` bounds each example's gradient, but DETR's set loss "
            "(YOLOS) and CenterNet's loss normalise by the boxes of the whole batch in "
            f"{task}; use 'central' or 'local'."
        )
    size = image_preprocess(spec, cfg.model.image_size).size
    if spec.family == CENTERNET_FAMILY:
        centernet_config(is_tiny(spec), 1, size)  # a side that is not a multiple of 32 fails
        if not is_tiny(spec):
            check_lite0_packages()
        return
    if is_tiny(spec):
        check_input_size(tiny_yolos_config(1), size, spec.name)
    elif size % 16:  # the hub YOLOS models cut 16×16 patches
        raise FedpeftError(f"`model.image_size` is {size}; YOLOS takes a multiple of 16.")
    # a hub YOLOS offline and not cached: check_names' check_available refused it already


def detector_config(spec: ModelSpec, num_labels: int) -> Any:
    """The detector's ``transformers`` config, without weights (tiny: the tiny one)."""
    if spec.family == CENTERNET_FAMILY:
        return centernet_config(is_tiny(spec), num_labels, image_preprocess(spec, None).size)
    if is_tiny(spec):
        return tiny_yolos_config(num_labels)
    return load_model_config(spec, num_labels)


def detection_splits(
    cfg: ExperimentConfig, dataset: RawDataset, spec: ModelSpec
) -> tuple[DetectionSplit, DetectionSplit]:
    """Train and eval images, resized to the model's input once."""
    if not isinstance(dataset.train, DetectionImages) or not isinstance(
        dataset.eval, DetectionImages
    ):
        raise FedpeftError(f"dataset {dataset.name!r} holds no boxes for {DETECT_TASK!r}.")
    preprocess = image_preprocess(spec, cfg.model.image_size)
    return (
        detection_split(dataset.train, preprocess, dataset.num_labels, train=True),
        detection_split(dataset.eval, preprocess, dataset.num_labels, train=False),
    )


def predictions(
    logits: torch.Tensor, boxes: torch.Tensor, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (B, T, 4) as (x, y, w, h) in each image's pixels, scores (B, T), classes
    (B, T)): every detection token's best real class and that class's probability.
    ``sizes``: each image's (width, height)."""
    probs = logits.float().softmax(-1)[..., :-1]  # the last class is "no object"
    scores, labels = probs.max(-1)
    cx, cy, w, h = boxes.float().unbind(-1)
    xywh = torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1).cpu().double().numpy()
    xywh *= np.repeat(np.asarray(sizes, dtype=np.float64), 2, axis=1)[:, None, [0, 2, 1, 3]]
    return xywh, scores.cpu().double().numpy(), labels.cpu().numpy()


def coco_scores(
    split: DetectionSplit, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """COCO's bounding-box AP and AR (``pycocotools.cocoeval``) of every image's
    detections (``boxes`` as (x, y, w, h) pixels) against the split's boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    for i, item in enumerate(split.items):
        images.append({"id": i, "width": item.width, "height": item.height})
        for box, cls, crowd in zip(
            item.boxes.astype(np.float64), item.classes, item.crowd, strict=True
        ):
            x0, y0, x1, y1 = box.tolist()
            w, h = x1 - x0, y1 - y0
            truth.append(
                {"id": len(truth) + 1, "image_id": i, "category_id": int(cls),
                 "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(crowd)}
            )  # fmt: skip
    found = [
        {"image_id": i, "category_id": int(classes[i, t]), "bbox": boxes[i, t].tolist(),
         "score": float(scores[i, t])}
        for i in range(len(split.items)) for t in range(boxes.shape[1])
    ]  # fmt: skip
    categories = [{"id": c} for c in range(int(split.num_labels))]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": truth, "categories": categories}
        gt.createIndex()
        run = COCOeval(gt, gt.loadRes(found), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    stats = [float(x) for x in run.stats]  # -1: no box of any class to score against
    return {"map_50_95": stats[0], "map_50": stats[1], "map_75": stats[2], "mar_100": stats[8]}


def evaluate_detection(
    model: nn.Module, split: DetectionSplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    boxes, scores, classes = [], [], []
    loss_sum = 0.0
    model.eval()
    with torch.inference_mode():
        for idx, batch in split.eval_batches(batch_size):
            out = model(**batch.to(device).model_inputs())
            loss_sum += float(out.loss) * len(idx)
            sizes = np.asarray(
                [(split.items[int(i)].width, split.items[int(i)].height) for i in idx]
            )
            b, s, c = predictions(out.logits, out.pred_boxes, sizes)
            boxes.append(b)
            scores.append(s)
            classes.append(c)
    result = coco_scores(
        split, np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
    )
    return result | {"accuracy": result["map_50_95"], "loss": loss_sum / max(len(split), 1)}
