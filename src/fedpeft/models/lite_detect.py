"""A dense object detector on the pretrained EfficientNet-Lite0 trunk: CenterNet (Zhou et
al., 2019, "Objects as Points") over a small feature pyramid.

Why fedpeft builds this head itself: the one pretrained vision trunk that ships offline is
EfficientNet-Lite0 (``models/vision.py``), and no well-kept detection library can put a head
on it here. ``torchvision`` (FCOS, RetinaNet, SSDLite) cannot be installed offline for the
pinned torch 2.13: the only build on the package index here (0.28.0) is a CUDA build whose
operators do not load next to the CPU torch; ``transformers``' detectors (the DETR family,
YOLOS) take only their own or ``timm`` backbones, and their set-prediction heads train
slowly from random weights. CenterNet is the simplest head that converges on a CPU.

Model. The trunk (stem and MBConv blocks, no 1×1 head conv, BatchNorm statistics frozen as
in the classifier) gives maps at strides 8, 16 and 32; ``detection_head`` joins them top
down (FPN, Lin et al., 2017): ``p₃₂ = L₃₂ c₃₂``, ``p_s = L_s c_s + up₂(p_{2s})``, ``L`` 1×1
convolutions to ``channels``. On ``p₈`` three branches (3×3 conv, ReLU, 1×1 conv) predict a
centre heatmap ``Ŷ`` per class (sigmoid; bias −2.19 so ``Ŷ`` starts at 0.1), the box size
``(w, h)`` and the centre's sub-cell offset, all in cells of the stride-8 grid.

Training (the paper's eq. 1–3). Each box of class ``c`` centred at ``p`` (grid cells) puts
``exp(−‖x − ⌊p⌋‖² / 2σ²)`` into ``Y_c`` (the largest where boxes overlap), ``σ = (2r + 1)/6``
with CenterNet's radius ``r`` for IoU 0.7. Loss ``L = L_k + 0.1·L_size + L_off``:
``L_k = −1/N Σ { (1−Ŷ)² log Ŷ where Y = 1; (1−Y)⁴ Ŷ² log(1−Ŷ) elsewhere }`` and L1 losses
of size and offset at the ``N`` centres.

Decoding: peaks are the heatmap values equal to their 3×3 max-pool; the top ``K`` over
classes and cells are the detections. They are returned in YOLOS' form so the evaluator
and the round loop treat both detectors alike: ``pred_boxes`` (B, K, 4) normalised
``(cx, cy, w, h)`` and ``logits`` (B, K, labels + 1) whose softmax is exactly the peak's
score ``s`` on its class and ``1 − s`` on "no object" (the last column).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from fedpeft.data.images import ImagePreprocess
from fedpeft.errors import FedpeftError
from fedpeft.models.registry import ModelSpec
from fedpeft.models.vision import (
    EFFICIENTNET_LITE0,
    image_preprocess,
    is_tiny,
    lite0_weights,
    lite_trunk,
    register_image_model,
)

CENTERNET_FAMILY = "centernet"
LITE0_CENTERNET = "efficientnet-lite0-centernet"
TINY_CENTERNET = "tiny-centernet"
STRIDES = (8, 16, 32)  # the pyramid levels; the head runs at the first
HEAD = "detection_head"
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
_PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)  # the heatmap starts at 0.1 (CenterNet's −2.19)
SIZE_WEIGHT = 0.1


@dataclass(frozen=True)
class CenterNetConfig:
    """What builds the detector; ``image_size`` (a multiple of 32) sets the FLOP counts."""

    variant: str = EFFICIENTNET_LITE0
    num_labels: int = 3
    image_size: int = 320
    width: float = 1.0
    depth: float = 1.0
    channels: int = 64  # the pyramid's and the head branches' width
    max_detections: int = 100  # K: peaks kept per image (COCO scores up to 100)
    label_names: tuple[str, ...] = field(default=())
    model_type: str = "efficientnet_lite_centernet"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def centernet_config(tiny: bool, num_labels: int, image_size: int) -> CenterNetConfig:
    """Lite0 with a 64-wide head, or (``tiny``) the tiny trunk with a 16-wide head."""
    if image_size % 32:
        raise FedpeftError(
            f"`model.image_size` is {image_size}; the CenterNet detector joins maps at strides "
            f"8, 16 and 32, so use a multiple of 32 (e.g. {max(32, image_size // 32 * 32)})."
        )
    base = CenterNetConfig(num_labels=num_labels, image_size=image_size)
    return replace(base, width=0.25, depth=0.3, channels=16) if tiny else base


@dataclass
class CenterNetOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, K, labels + 1), YOLOS' form (module docstring)
    pred_boxes: torch.Tensor | None = None  # (B, K, 4) normalised (cx, cy, w, h)
    heatmap: torch.Tensor | None = None  # (B, labels, H/8, W/8) logits


def _branch(channels: int, out: int, bias: float | None = None) -> nn.Sequential:
    final = nn.Conv2d(channels, out, 1)
    if bias is not None and final.bias is not None:
        nn.init.constant_(final.bias, bias)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), final)


class CenterNetHead(nn.Module):
    """FPN laterals over strides 8/16/32 and the heatmap, size and offset branches."""

    def __init__(self, level_channels: tuple[int, ...], channels: int, num_labels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in level_channels)
        self.heatmap = _branch(channels, num_labels, _PRIOR_BIAS)
        self.size = _branch(channels, 2)
        self.offset = _branch(channels, 2)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        p = self.lateral[-1](levels[-1])
        for lateral, c in zip(self.lateral[-2::-1], levels[-2::-1], strict=True):
            p = lateral(c) + F.interpolate(p, size=c.shape[-2:], mode="nearest")
        return self.heatmap(p), self.size(p), self.offset(p)


class CenterNetDetector(nn.Module):
    """``backbone`` (EfficientNet-Lite trunk) → ``detection_head``; CenterNet's loss when
    ``labels`` (DETR-style targets) are given, decoded detections always."""

    def __init__(self, config: CenterNetConfig) -> None:
        super().__init__()
        self.config = config
        # no dropout nor stochastic depth: a few hundred images, few epochs
        self.backbone = lite_trunk(config.variant, config.width, config.depth, 0.0, 0.0)
        for unused in ("_conv_head", "_bn1", "_fc"):  # the classifier's head, not the trunk's
            setattr(self.backbone, unused, nn.Identity())
        self.taps = _level_blocks(self.backbone)
        widths = tuple(self.backbone._blocks[i]._bn2.num_features for i in self.taps)
        self.detection_head = CenterNetHead(widths, config.channels, config.num_labels)

    def features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = b._swish(b._bn0(b._conv_stem(pixel_values)))
        levels = []
        for i, block in enumerate(b._blocks):
            x = block(x)
            if i in self.taps:
                levels.append(x)
        return levels

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: list[dict[str, torch.Tensor]] | None = None,
        **_: Any,
    ) -> CenterNetOutput:
        heat, size, offset = self.detection_head(self.features(pixel_values))
        loss = None if labels is None else centernet_loss(heat, size, offset, labels)
        with torch.no_grad():
            logits, boxes = decode(heat, size, offset, self.config.max_detections)
        return CenterNetOutput(loss=loss, logits=logits, pred_boxes=boxes, heatmap=heat)

    def train(self, mode: bool = True) -> CenterNetDetector:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # frozen running statistics, as in the classifier
        return self


def _level_blocks(backbone: nn.Module) -> tuple[int, ...]:
    """The last block at each stride of ``STRIDES`` (the stem halves the input)."""
    stride, last = 2, {}
    for i, block in enumerate(backbone._blocks):  # type: ignore[arg-type]
        stride *= int(block._depthwise_conv.stride[0])
        last[stride] = i
    if any(s not in last for s in STRIDES):
        raise FedpeftError(f"the trunk reaches strides {sorted(last)}, not all of {STRIDES}.")
    return tuple(last[s] for s in STRIDES)


def gaussian_radius(w: torch.Tensor, h: torch.Tensor, overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius (its ``gaussian_radius``, as released): the smallest of three
    corner shifts that keep IoU ≥ ``overlap`` with a ``w × h`` box, floored, at least 0."""
    b1, c1 = h + w, w * h * (1 - overlap) / (1 + overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).floor().clamp(min=0)


def targets(
    labels: list[dict[str, torch.Tensor]], num_labels: int, height: int, width: int
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """(heatmap targets ``Y`` (B, labels, H, W); per image (cell index, size, offset) of
    each box) from normalised ``(cx, cy, w, h)`` boxes on an ``H × W`` grid."""
    device = labels[0]["boxes"].device if labels else torch.device("cpu")
    heat = torch.zeros(len(labels), num_labels, height, width, device=device)
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1)
    per_image = []
    for b, target in enumerate(labels):
        boxes = target["boxes"].float().reshape(-1, 4)
        cx, cy = boxes[:, 0] * width, boxes[:, 1] * height
        w, h = boxes[:, 2] * width, boxes[:, 3] * height
        ix = cx.floor().clamp(0, width - 1)
        iy = cy.floor().clamp(0, height - 1)
        sigma = (2 * gaussian_radius(w, h) + 1) / 6
        d2 = (xs - ix.view(-1, 1, 1)) ** 2 + (ys - iy.view(-1, 1, 1)) ** 2
        g = torch.exp(-d2 / (2 * sigma.view(-1, 1, 1) ** 2))
        where = target["class_labels"].long().view(-1, 1, 1).expand_as(g)
        heat[b].scatter_reduce_(0, where, g, "amax")
        cell = (iy * width + ix).long()
        per_image.append((cell, torch.stack([w, h], 1), torch.stack([cx - ix, cy - iy], 1)))
    return heat, per_image


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (α = 2, β = 4), summed, not yet divided by N."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_term = torch.log(p) * (1 - p) ** 2 * pos
    neg_term = torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_term.sum() + neg_term.sum())


def centernet_loss(
    heat: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    labels: list[dict[str, torch.Tensor]],
) -> torch.Tensor:
    """``L_k + 0.1·L_size + L_off`` over the batch, divided by its number of boxes."""
    _, c, h, w = heat.shape
    target, per_image = targets(labels, c, h, w)
    l1 = heat.new_zeros(())
    for b, (cell, wh, off) in enumerate(per_image):
        if len(cell) == 0:
            continue
        l1 = l1 + SIZE_WEIGHT * (size[b].flatten(1)[:, cell].T - wh).abs().sum()
        l1 = l1 + (offset[b].flatten(1)[:, cell].T - off).abs().sum()
    n = max(sum(len(cell) for cell, _, _ in per_image), 1)
    return (focal_loss(heat, target) + l1) / n


def decode(
    heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, K, labels + 1), boxes (B, K, 4) normalised (cx, cy, w, h)) of the top
    ``K`` heatmap peaks (values equal to their 3×3 max-pool)."""
    bsz, c, h, w = heat.shape
    scores = heat.float().sigmoid()
    peaks = scores * (F.max_pool2d(scores, 3, stride=1, padding=1) == scores)
    top, flat = peaks.flatten(1).topk(min(k, c * h * w), dim=1)
    cls, cell = flat // (h * w), flat % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    wh = size.float().flatten(2).gather(2, cell.unsqueeze(1).expand(-1, 2, -1))
    off = offset.float().flatten(2).gather(2, cell.unsqueeze(1).expand(-1, 2, -1))
    boxes = torch.stack(
        [
            (xs + off[:, 0]) / w,
            (ys + off[:, 1]) / h,
            wh[:, 0].clamp(min=0) / w,
            wh[:, 1].clamp(min=0) / h,
        ],
        dim=-1,
    )
    s = top.clamp(1e-6, 1 - 1e-6)
    logits = torch.full((bsz, top.shape[1], c + 1), -1e4, device=heat.device)
    logits.scatter_(2, cls.unsqueeze(-1), s.log().unsqueeze(-1))
    logits[..., c] = torch.log1p(-s)
    return logits, boxes


def build_centernet(config: CenterNetConfig, pretrained: bool) -> CenterNetDetector:
    """The detector; ``pretrained``: the trunk from the packaged ImageNet weights."""
    model = CenterNetDetector(config)
    if pretrained:
        weights = lite0_weights(config.variant)
        unused = ("_fc.", "_conv_head.", "_bn1.")
        state = {k: v for k, v in weights.items() if not k.startswith(unused)}
        result = model.backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FedpeftError(
                f"EfficientNet-Lite0 weights do not fit the detector's trunk (missing "
                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})."
            )
    return model


register_image_model(
    ModelSpec(
        name=LITE0_CENTERNET,
        family=CENTERNET_FAMILY,
        hub_id=LITE0_CENTERNET,
        aliases=("lite0-centernet",),
    ),
    ImagePreprocess(320, _LITE_MEAN, _LITE_STD),
    tiny=False,
)
register_image_model(
    ModelSpec(name=TINY_CENTERNET, family=CENTERNET_FAMILY, hub_id=TINY_CENTERNET),
    ImagePreprocess(64, _LITE_MEAN, _LITE_STD),
    tiny=True,
)


def load_centernet(
    spec: ModelSpec, num_labels: int, seed: int, label_names: list[str], image_size: int | None
) -> CenterNetDetector:
    """The detector with a fresh head for ``num_labels`` initialised under ``seed``; the
    trunk from Lite0's ImageNet weights (random for the tiny config)."""
    tiny = is_tiny(spec)
    size = image_preprocess(spec, image_size).size
    config = replace(centernet_config(tiny, num_labels, size), label_names=tuple(label_names))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_centernet(config, pretrained=not tiny)
