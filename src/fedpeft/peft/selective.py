"""Selective methods and the full fine-tuning baseline, which ``peft`` does not offer.

BitFit (Ben Zaken et al., 2022) trains every bias (LayerNorm biases included) and the
head; ``head`` trains the task head only; ``full`` trains everything — the baseline every
comparison needs. None adds parameters or forward FLOPs. BitFit and ``head`` are not for
causal LMs: LLaMA blocks have no biases, so BitFit would train nothing, and the LM head is
the (tied) 49152×576 embedding matrix, no small head.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from fedpeft.peft.arch import Architecture
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import Kind, MethodSpec, Task, head_params_trainable

# image families with a head
WITH_HEAD = frozenset({"efficientnet", "centernet", "vit", "vilt", "yolos"})
CLASSIFY: frozenset[Task] = frozenset({"classify", "qa", "vqa", "detect"})  # a small head


class BitFitSpec(MethodSpec):
    kind: ClassVar[Kind] = "selective"
    description: ClassVar[str] = "biases and head only"
    calls_base_linears: ClassVar[bool] = True
    image_families: ClassVar[frozenset[str]] = WITH_HEAD
    tasks: ClassVar[frozenset[Task]] = CLASSIFY
    gain_prior: ClassVar[float | None] = 0.6  # ASSUMPTION: Ben Zaken et al. (2022), small models

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        head_params_trainable(model, arch)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.bias_params + arch.head_params

    def added_params(self, arch: Architecture) -> int:
        return 0


class HeadOnlySpec(MethodSpec):
    kind: ClassVar[Kind] = "selective"
    description: ClassVar[str] = "task head only"
    calls_base_linears: ClassVar[bool] = True
    image_families: ClassVar[frozenset[str]] = WITH_HEAD
    tasks: ClassVar[frozenset[Task]] = CLASSIFY
    gain_prior: ClassVar[float | None] = 0.5  # the floor: a linear probe of frozen features

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        head_params_trainable(model, arch)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.head_params

    def added_params(self, arch: Architecture) -> int:
        return 0


class FullSpec(MethodSpec):
    kind: ClassVar[Kind] = "baseline"
    description: ClassVar[str] = "full fine-tuning"
    image_families: ClassVar[frozenset[str]] = WITH_HEAD
    gain_prior: ClassVar[float | None] = 0.8  # the ceiling the PEFT methods are compared to
    trains_base: ClassVar[bool] = True

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.total_params

    def added_params(self, arch: Architecture) -> int:
        return 0


register_method("bitfit", BitFitSpec)
register_method("head", HeadOnlySpec)
register_method("full", FullSpec)
