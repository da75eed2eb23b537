"""YOLOS for object detection (Fang et al., 2021, "You Only Look at One Sequence: Rethinking
Transformer in Vision through Object Detection"), from ``transformers``.

A plain ViT reads the image's patches, a [CLS] token and ``T`` learned detection tokens;
two MLP heads on each detection token's last state predict a class among the labels and
"no object" (``class_labels_classifier``: d → d → d → labels + 1) and a box
(``bbox_predictor``: d → d → d → 4, sigmoid: normalised (cx, cy, w, h)). Training is
DETR's set loss (Carion et al., 2020): a Hungarian matching of predictions to targets
(``scipy.optimize.linear_sum_assignment``), then cross-entropy (the no-object class
weighted ``eos_coefficient``), L1 and generalised-IoU box losses — ``transformers``'
``ForObjectDetectionLoss``. The position embeddings are interpolated to the input size,
so any square side that is a multiple of the patch size runs.

Both heads are new for a run's labels; the hub default for users is ``hustvl/yolos-tiny``
(COCO-trained, 6.5 M parameters), loaded from the Hugging Face hub or its local cache.
No YOLOS weights ship offline: ``tiny-yolos`` is a random 2-block config for tests.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, YolosConfig, YolosForObjectDetection

from fedpeft.data.images import ImagePreprocess
from fedpeft.errors import FedpeftError
from fedpeft.hub import local_only
from fedpeft.models.lite_detect import CENTERNET_FAMILY, load_centernet
from fedpeft.models.registry import ModelSpec, hub_load_error, set_label_names
from fedpeft.models.vision import is_tiny, register_image_model

YOLOS_TINY_ID = "hustvl/yolos-tiny"
DETECTION_FAMILIES = ("yolos", "centernet")  # CenterNet: models/lite_detect.py
HEADS = ("class_labels_classifier", "bbox_predictor")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_yolos_config(num_labels: int) -> YolosConfig:
    """2 blocks of width 32 on 64×64 images in 16×16 patches, 10 detection tokens; mid
    position embeddings on (as YOLOS-S), so the cost model covers them."""
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=10,
        use_mid_position_embeddings=True,
    )
    config.num_labels = num_labels
    return config


def check_input_size(config: YolosConfig, size: int, name: str) -> None:
    """The square input side must be a whole number of patches."""
    patch = int(config.patch_size)  # type: ignore[arg-type]  # an int in every YOLOS
    if size % patch:
        raise FedpeftError(
            f"`model.image_size` is {size}, but {name} cuts images into {patch}×{patch} "
            f"patches; use a multiple of {patch} (e.g. {max(patch, size // patch * patch)})."
        )


def load_detector(
    spec: ModelSpec,
    num_labels: int,
    seed: int,
    label_names: list[str],
    image_size: int | None = None,
) -> nn.Module:
    """YOLOS with fresh class and box heads for ``num_labels`` (initialised under
    ``seed``); the labels become the config's ``id2label``/``label2id``. A CenterNet
    family model: the EfficientNet-Lite detector (``lite_detect``) at ``image_size``."""
    if spec.family not in DETECTION_FAMILIES:
        raise FedpeftError(
            f"object detection needs a detector ({', '.join(DETECTION_FAMILIES)}), "
            f"not `{spec.name}`."
        )
    if spec.family == CENTERNET_FAMILY:
        return load_centernet(spec, num_labels, seed, label_names, image_size)
    model: PreTrainedModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_tiny(spec):
            model = YolosForObjectDetection(tiny_yolos_config(num_labels))
        else:
            model = _from_hub(spec, num_labels)
    set_label_names(model.config, label_names)
    return model


def _from_hub(spec: ModelSpec, num_labels: int) -> PreTrainedModel:
    try:
        return YolosForObjectDetection.from_pretrained(
            spec.hub_id,
            num_labels=num_labels,
            ignore_mismatched_sizes=True,  # the checkpoint's COCO class head is replaced
            local_files_only=local_only(),
            use_safetensors=True,
        )
    except (OSError, ValueError) as e:
        raise hub_load_error(
            spec,
            e,
            "no YOLOS weights ship offline — connect to the hub once, or use `tiny-yolos` "
            "(random weights) to check the code path.",
        ) from None


register_image_model(
    ModelSpec(name=YOLOS_TINY_ID, family="yolos", hub_id=YOLOS_TINY_ID, aliases=("yolos-tiny",)),
    ImagePreprocess(512, _IMAGENET_MEAN, _IMAGENET_STD),
    tiny=False,
)
register_image_model(
    ModelSpec(name="tiny-yolos", family="yolos", hub_id="tiny-yolos"),
    ImagePreprocess(64, _IMAGENET_MEAN, _IMAGENET_STD),
    tiny=True,
)
