"""The ``Architecture`` of a model or a ``transformers`` config: ``model_type`` picks the family."""

from __future__ import annotations

from typing import Any

from fedpeft.errors import FedpeftError
from fedpeft.peft import arch_text, arch_vision
from fedpeft.peft.arch import Architecture


def model_architecture(model: Any) -> Architecture:
    """The ``Architecture`` of a built ``transformers`` model with its task head (a
    language-model head, ``lm_head``, makes it a causal LM)."""
    config = getattr(model, "config", None)
    if config is None:
        raise FedpeftError(
            f"{type(model).__name__} has no `config`; expected a transformers model."
        )
    if hasattr(model, "lm_head"):
        return architecture(config, 0, causal_lm=True)
    if getattr(config, "model_type", None) == "clip" and hasattr(model, "text_model"):
        return architecture(config, 0, matching=True)  # CLIPModel itself, not inside a classifier
    if hasattr(model, "qa_outputs"):
        return architecture(config, 2, qa=True)
    return architecture(config, int(config.num_labels))


def architecture(
    config: Any,
    num_labels: int,
    causal_lm: bool = False,
    qa: bool = False,
    matching: bool = False,
    image_size: int | None = None,
) -> Architecture:
    """The ``Architecture`` of a ``transformers`` config (``model_type`` picks the family);
    ``causal_lm`` for the language-model head, ``qa`` for an encoder's span head, instead of
    a classifier of ``num_labels``; ``matching`` for CLIP matching images and texts;
    ``image_size``: a detector's square input side (its sequence length)."""
    model_type = getattr(config, "model_type", None)
    if qa:
        if model_type == "bert":
            return arch_text.encoder_qa(config, "bert")
        if model_type in ("roberta", "xlm-roberta"):
            return arch_text.encoder_qa(config, "roberta")
        raise FedpeftError(
            f"model type {model_type!r} has no question-answering cost model; supported: "
            "bert, roberta."
        )
    if causal_lm:
        if model_type == "llama":
            return arch_text.llama_causal_lm(config)
        raise FedpeftError(
            f"model type {model_type!r} has no causal-LM cost model; supported: llama."
        )
    if model_type == "efficientnet_lite":
        return arch_vision.efficientnet(config, num_labels)
    if model_type == "efficientnet_lite_centernet":
        return arch_vision.centernet(config, num_labels, image_size)
    if model_type == "vit":
        return arch_vision.vit(config, num_labels)
    if model_type == "clip":
        return arch_vision.clip(config, num_labels, matching=matching)
    if matching:
        raise FedpeftError(
            f"model type {model_type!r} has no image–text matching cost model; supported: clip."
        )
    if model_type == "vilt":
        return arch_vision.vilt(config, num_labels)
    if model_type == "yolos":
        return arch_vision.yolos(config, num_labels, image_size)
    if model_type == "bert":
        return arch_text.encoder(config, "bert", num_labels)
    if model_type in ("roberta", "xlm-roberta"):
        return arch_text.encoder(config, "roberta", num_labels)
    if model_type == "llama":
        return arch_text.llama(config, num_labels)
    raise FedpeftError(
        f"model type {model_type!r} has no cost model yet; supported: bert, roberta, llama, "
        "efficientnet_lite, efficientnet_lite_centernet, vit, clip, vilt, yolos."
    )
