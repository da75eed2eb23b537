"""ViLT for visual question answering (Kim et al., 2021, "ViLT: Vision-and-Language
Transformer Without Convolution or Region Supervision"), from ``transformers``.

One transformer reads the question's word embeddings and the image's 32×32 patch
embeddings together; ``ViltForQuestionAnswering``'s head (d → 2d, LayerNorm, GELU, 2d →
answers) scores every answer of the vocabulary from the pooled first token, trained with
ViLT's VQA loss (binary cross-entropy against the answer scores, times the number of
answers). The head is new (``num_labels`` = the train answers); the users' hub default is
ViLT's pre-trained (masked language and image–text matching) checkpoint
``dandelin/vilt-b32-mlm``. Its tokenizer is BERT's uncased WordPiece, which the offline
MiniLM tokenizer shares, so ``tiny-vilt`` uses MiniLM's.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, ViltConfig, ViltForQuestionAnswering

from fedpeft.data.images import ImagePreprocess
from fedpeft.errors import FedpeftError
from fedpeft.hub import local_only
from fedpeft.models.registry import MINILM_ID, ModelSpec, hub_load_error, set_label_names
from fedpeft.models.vision import is_tiny, register_image_model

VILT_ID = "dandelin/vilt-b32-mlm"
VQA_FAMILIES = ("vilt",)
_VILT_MEAN, _VILT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def tiny_vilt_config(num_labels: int) -> ViltConfig:
    """2 blocks of width 32 on 32×32 images in 8×8 patches; BERT's vocabulary; 40 text
    positions, as ViLT's."""
    config = ViltConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
        max_position_embeddings=40,
    )
    config.num_labels = num_labels
    return config


def image_tokens(config: Any, size: int) -> int:
    """Tokens an image of ``size``×``size`` adds to ViLT's sequence: its patches + [CLS]."""
    return (size // int(config.patch_size)) ** 2 + 1


def load_vqa_model(
    spec: ModelSpec, num_labels: int, seed: int, label_names: list[str]
) -> PreTrainedModel:
    """ViLT with a fresh answer head of ``num_labels`` (initialised under ``seed``); the
    answers become the config's ``id2label``/``label2id`` (exported with the adapter)."""
    if spec.family not in VQA_FAMILIES:
        raise FedpeftError(f"visual question answering needs a ViLT model, not `{spec.name}`.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_tiny(spec):
            model = ViltForQuestionAnswering(tiny_vilt_config(num_labels))
        else:
            try:
                model = ViltForQuestionAnswering.from_pretrained(
                    spec.hub_id,
                    num_labels=num_labels,
                    ignore_mismatched_sizes=True,  # a checkpoint's own answer head is replaced
                    local_files_only=local_only(),
                    use_safetensors=True,
                )
            except (OSError, ValueError) as e:
                raise hub_load_error(spec, e) from None
    set_label_names(model.config, label_names)
    return model


register_image_model(
    ModelSpec(name=VILT_ID, family="vilt", hub_id=VILT_ID, aliases=("vilt-b32",)),
    ImagePreprocess(384, _VILT_MEAN, _VILT_STD),
    tiny=False,
)
register_image_model(
    ModelSpec(name="tiny-vilt", family="vilt", hub_id="tiny-vilt", tokenizer_from=MINILM_ID),
    ImagePreprocess(32, _VILT_MEAN, _VILT_STD),
    tiny=True,
)
