"""Which PEFT methods each model family supports: one table, checked before anything loads.

Text families (BERT-style encoders, LLaMA-style decoders) support every registered method.
Image families support what fits their structure: a CNN has no tokens to prepend
(prompt, prefix) and no transformer blocks to put bottleneck adapters or IA3 vectors in.
"""

from __future__ import annotations

from fedpeft.errors import FedpeftError
from fedpeft.peft.registry import method_names

FAMILY_METHODS: dict[str, tuple[str, ...]] = {
    "efficientnet": ("bitfit", "full", "head", "lora"),
    "vit": ("bitfit", "full", "head", "houlsby", "ia3", "lora", "pfeiffer"),
    "clip": ("lora", "prompt"),  # prompt = CoOp's learned context for the class prompts
}


def supported_methods(family: str) -> list[str]:
    """The methods a family supports (every registered one for the text families)."""
    return sorted(FAMILY_METHODS.get(family, method_names()))


def check_supported(method: str, family: str, model: str) -> None:
    """Raises a ``FedpeftError`` naming the supported methods when ``method`` is not one."""
    allowed = supported_methods(family)
    if method not in allowed:
        raise FedpeftError(
            f"`peft.method` {method!r} is not supported for model `{model}` "
            f"({family} family); supported: {', '.join(allowed)}."
        )
