"""FeDeRA: LoRA whose factors start from the SVD of the pretrained weights (Yan et al., 2024,
"FeDeRA: Efficient Fine-tuning of Language Models in Federated Learning Leveraging Weight
Decomposition")::

    W₀ = U Σ Vᵀ,   B₀ = U_r √(Σ_r / s),   A₀ = √(Σ_r / s) V_rᵀ,   W_res = W₀ − s·B₀A₀
    h = W_res x + s·B A x,   s = α / r

so training starts in the principal directions of ``W₀`` rather than from ``B = 0``, and
the untrained model is unchanged (``W_res + s·B₀A₀ = W₀``). This is PEFT's PiSSA
initialisation (``init_lora_weights="pissa"``, exact SVD), which FeDeRA applies in
federated learning; the residual keeping the start unchanged is PiSSA's form, the FeDeRA
paper states the SVD initialisation. PiSSA rewrites the adapted base weights, so each
targeted weight is first replaced by a private copy: a shared frozen base
(``peft.share``) is never written. The exported folder is a standard PEFT folder:
``PeftModel.from_pretrained`` recomputes the same residual from the pristine base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from peft import LoraConfig
from torch import nn

from fedpeft.peft.arch import Architecture
from fedpeft.peft.lora import LoraSpec
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import MethodSpec


class FederaSpec(LoraSpec):
    description: ClassVar[str] = "LoRA started from the SVD of W₀, residual frozen (FeDeRA)"
    calls_base_linears: ClassVar[bool] = False  # decomposes and rewrites W₀
    image_families: ClassVar[frozenset[str]] = frozenset({"vit", "clip"})  # linear layers
    # ASSUMPTION: above LoRA under label skew, as Yan et al. (2024) report on GLUE tasks.
    gain_prior: ClassVar[float | None] = 0.76
    envelope_group: ClassVar[str | None] = None  # its residual base differs from LoRA's

    def lora_config(self, arch: Architecture) -> LoraConfig:
        config = super().lora_config(arch)
        config.init_lora_weights = "pissa"
        return config

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        for lin, _ in self.targets(arch):
            _privatise_weight(model.get_submodule(lin.name))
        return super().apply(model, arch)

    def envelope_alpha(self) -> float | None:
        return None

    @classmethod
    def envelope(cls, members: Sequence[MethodSpec]) -> MethodSpec:
        return members[0]


def _privatise_weight(module: nn.Module) -> None:
    """``module.weight`` becomes a frozen private copy (the base's tensor is left as it is)."""
    weight = module._parameters.get("weight")
    if weight is not None:
        module._parameters["weight"] = nn.Parameter(weight.detach().clone(), requires_grad=False)


register_method("federa", FederaSpec)
