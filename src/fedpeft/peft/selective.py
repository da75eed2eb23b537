"""Selective methods and the full fine-tuning baseline, which ``peft`` does not offer.

BitFit (Ben Zaken et al., 2022) trains every bias (LayerNorm biases included) and the
head; ``head`` trains the task head only; ``full`` trains everything — the baseline every
comparison needs. None adds forward FLOPs.
"""

from __future__ import annotations

from torch import nn

from fedpeft.peft.arch import Architecture
from fedpeft.peft.registry import MethodSpec, PeftMethod, head_params_trainable, register_method


class BitFitSpec(MethodSpec):
    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        head_params_trainable(model, arch)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.bias_params + arch.head_params


class HeadOnlySpec(MethodSpec):
    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        head_params_trainable(model, arch)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.head_params


class FullSpec(MethodSpec):
    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        return arch.total_params


# Not for causal LMs: LLaMA blocks have no biases, so BitFit would train nothing, and the
# LM head is the (tied) 49152×576 embedding matrix, no small head.
register_method(
    PeftMethod("bitfit", BitFitSpec, "selective", "biases and head only", causal_lm=False)
)
register_method(PeftMethod("head", HeadOnlySpec, "selective", "task head only", causal_lm=False))
register_method(PeftMethod("full", FullSpec, "baseline", "full fine-tuning"))
