"""Which PEFT methods each model family and task supports, checked before anything loads.

Each method's spec says where it applies (``MethodSpec.image_families``, ``.tasks``): text
families (BERT-style encoders, LLaMA-style decoders, any hub model) take every method;
an image family takes what fits its structure — a CNN has no tokens to prepend (prompt,
prefix) and no transformer blocks to put bottleneck adapters or IA3 vectors in.
"""

from __future__ import annotations

from fedpeft.errors import FedpeftError
from fedpeft.peft.registry import get_method, method_names

# the families arch_vision describes (ViLT also reads text)
IMAGE_FAMILIES = frozenset({"efficientnet", "centernet", "vit", "clip", "vilt", "yolos"})


def supports(method: str, family: str) -> bool:
    """Whether ``method`` applies to models of ``family``."""
    return family not in IMAGE_FAMILIES or family in get_method(method).spec.image_families


def supported_methods(family: str) -> list[str]:
    """The methods a family supports (every registered one for the text families)."""
    return [m for m in method_names() if supports(m, family)]


def check_supported(method: str, family: str, model: str) -> None:
    """Raises a ``FedpeftError`` naming the supported methods when ``method`` is not one."""
    allowed = supported_methods(family)
    if method not in allowed:
        raise FedpeftError(
            f"`peft.method` {method!r} is not supported for model `{model}` "
            f"({family} family); supported: {', '.join(allowed)}."
        )
