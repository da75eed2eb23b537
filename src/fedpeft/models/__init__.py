"""Model registry and loaders."""

from fedpeft.models.registry import (
    MINILM_ID,
    ModelSpec,
    get_model_spec,
    load_classifier,
    load_tokenizer,
    model_names,
    register_model,
)

__all__ = [
    "MINILM_ID",
    "ModelSpec",
    "get_model_spec",
    "load_classifier",
    "load_tokenizer",
    "model_names",
    "register_model",
]
