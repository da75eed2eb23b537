"""Frozen linear layers stored in the autocast dtype.

Under bf16 autocast every ``F.linear`` casts its float32 weight to bf16 on each call:
``torch.autocast`` caches that cast only for leaf tensors that require gradients, and a
frozen base's weights do not. Those casts were 7.1 % of a MiniLM LoRA training step
(``aten::_to_copy``, ``torch.profiler``; 4.9 % after, the rest being activations' casts),
BENCHMARKS issue 19. Storing the frozen weights in bf16 once gives every matmul the very
operands autocast would have made, so forward values and gradients are bit-equal (tested),
those copies are gone and the frozen weights take half the memory.

Only plain ``nn.Linear`` layers whose weight no other module owns (a decoder's output layer
tied to its embedding stays float32), with nothing trained in them (BitFit's layers, whose
bias trains, stay ``nn.Linear``: opacus finds a layer's per-example gradient rule by its
exact type), and that no trained copy is made from (a head peft keeps as
``original_module`` beside the trained one stays float32, so the heads of models built
later start from the same values). A stored layer called outside autocast casts its
stored (rounded) weight up to the input's dtype rather than fail on mixed dtypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StoredLowLinear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight is kept in a low-precision dtype (``store_low``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
            weight = weight.to(input.dtype)  # e.g. a float32 path: float32 arithmetic
        return F.linear(input, weight, self.bias)


def store_low(model: nn.Module, dtype: torch.dtype, sharing: tuple[nn.Module, ...] = ()) -> int:
    """``model``'s frozen float32 weights of plain linear layers stored in ``dtype``, in
    place; returns how many. ``sharing`` holds modules over the same tensors (the base the
    model was built from): their layers holding a stored weight become ``StoredLowLinear``
    too, so models built from them later inherit both."""
    owned_elsewhere = {
        id(p)
        for module in model.modules()
        if type(module) not in (nn.Linear, StoredLowLinear)
        for p in module.parameters(recurse=False)
    }
    copied_from = {
        id(sub)
        for module in model.modules()
        if isinstance(getattr(module, "original_module", None), nn.Module)
        for sub in module.modules()
    }
    stored: set[int] = set()
    for module in model.modules():
        if type(module) is not nn.Linear or id(module) in copied_from:
            continue
        w = module.weight
        trains = any(p.requires_grad for p in module.parameters())
        if trains or w.dtype != torch.float32 or id(w) in owned_elsewhere:
            continue
        if id(w) not in stored:
            w.data = w.data.to(dtype)
            stored.add(id(w))
    for m in (model, *sharing):
        for module in m.modules():
            if type(module) is nn.Linear and id(module.weight) in stored:
                module.__class__ = StoredLowLinear
    return len(stored)
