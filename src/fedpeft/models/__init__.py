"""Model registry and loaders."""

from fedpeft.models.registry import (
    MINILM_ID,
    ModelSpec,
    check_available,
    get_model_spec,
    load_causal_lm,
    load_classifier,
    load_model_config,
    load_qa_model,
    load_tokenizer,
    model_names,
    register_model,
)
from fedpeft.models.smollm import SMOLLM2_ID, smollm2_path
from fedpeft.models.vision import (
    image_preprocess,
    is_vision_model,
    load_clip_matcher,
    load_vision_classifier,
    vision_config,
)

from fedpeft.models.vilt import VILT_ID, load_vqa_model  # isort: skip - registers ViLT
from fedpeft.models.yolos import YOLOS_TINY_ID, load_detector  # isort: skip - registers YOLOS

__all__ = [
    "MINILM_ID",
    "SMOLLM2_ID",
    "VILT_ID",
    "YOLOS_TINY_ID",
    "ModelSpec",
    "check_available",
    "get_model_spec",
    "image_preprocess",
    "is_vision_model",
    "load_causal_lm",
    "load_classifier",
    "load_clip_matcher",
    "load_detector",
    "load_model_config",
    "load_qa_model",
    "load_tokenizer",
    "load_vision_classifier",
    "load_vqa_model",
    "model_names",
    "register_model",
    "smollm2_path",
    "vision_config",
]
