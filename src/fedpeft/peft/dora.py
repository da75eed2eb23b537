"""DoRA through Hugging Face ``peft`` (``LoraConfig(use_dora=True)``): weight-decomposed
low-rank adaptation (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation")::

    W' = m ⊙ (W₀ + (α/r)·B A) / ‖W₀ + (α/r)·B A‖_c

a trained magnitude ``m`` (one value per output, initialised to ``‖W₀‖_c``, so an
untrained adapter changes nothing) times the direction of the LoRA-updated weight, whose
norm is treated as a constant in backprop (§4.3). Options are LoRA's; the magnitudes train
and travel with the factors.

Costs as PEFT computes DoRA, beyond LoRA's: ``d_out`` magnitudes per adapted projection;
once per forward pass the product ``B A`` for the norm (a linear layer gets it by passing
an identity batch through A and B, ``2·r·d_in·(d_in + d_out)`` FLOPs; a 1×1 convolution by
one matrix product, ``2·r·d_in·d_out``); in training with dropout, the base projection
again on the dropped-out input (``2·d_in·d_out`` per position).

Each DoRA configuration is a group of its own in a heterogeneous run: the server evaluates
only the LoRA group at an envelope of ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from peft import LoraConfig

from fedpeft.peft.arch import Architecture
from fedpeft.peft.lora import LoraSpec
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import MethodSpec


class DoraSpec(LoraSpec):
    description: ClassVar[str] = "magnitude × direction of W₀ + (α/r)·BA"
    calls_base_linears: ClassVar[bool] = False  # reads W₀ for the direction's norm
    # ASSUMPTION: above LoRA at equal rank, as Liu et al. (2024) report on commonsense
    # reasoning and instruction tuning of LLaMA models.
    gain_prior: ClassVar[float | None] = 0.77
    envelope_group: ClassVar[str | None] = None

    def lora_config(self, arch: Architecture) -> LoraConfig:
        config = super().lora_config(arch)
        config.use_dora = True
        return config

    def trainable_params(self, arch: Architecture) -> int:
        return super().trainable_params(arch) + sum(lin.d_out for lin, _ in self.targets(arch))

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return super().extra_flops(arch, seq_len) + self.batch_flops(arch)

    def batch_flops(self, arch: Architecture) -> int:
        """``B A`` for the column norm, once per forward pass whatever the batch size."""
        return sum(
            2 * r * lin.d_in * (lin.d_out if lin.conv else lin.d_in + lin.d_out)
            for lin, r in self.targets(arch)
        )

    def train_flops(self, arch: Architecture, seq_len: int) -> int:
        again = 0  # with dropout, PEFT runs the base projection on the dropped-out input
        if self.dropout > 0:
            again = sum(
                (lin.positions or seq_len) * 2 * lin.d_in * lin.d_out
                for lin, _ in self.targets(arch)
            )
        return super().train_flops(arch, seq_len) + again

    def envelope_alpha(self) -> float | None:
        return None

    @classmethod
    def envelope(cls, members: Sequence[MethodSpec]) -> MethodSpec:
        return members[0]


register_method("dora", DoraSpec)
