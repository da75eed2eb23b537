"""VeRA through Hugging Face ``peft`` (``VeraConfig``): vector-based random matrix
adaptation (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation")::

    h = W₀x + Λ_b B Λ_d A x

``A`` (r × d_in) and ``B`` (d_out × r) are frozen random matrices shared by every adapted
projection (PEFT slices one pair of the largest shape), regenerated from
``projection_seed`` on every client, so they are never sent or saved. Only the diagonal
scalings train: ``Λ_d`` (r values) and ``Λ_b`` (d_out values, zero at first, so an untrained
adapter changes nothing) per projection, plus the task head.

Chosen as the second method added through the spec for federated fine-tuning: an update is
``r + d_out`` numbers per projection whatever the rank — on MiniLM-L6's queries and values
7,680 against LoRA r=8's 73,728 — so it is the communication-light end of the catalogue.
PEFT's VeRA adapts ``nn.Linear`` only, so it applies to the text families, ViT and CLIP but
not to EfficientNet's convolutions.

Options: ``r`` (256, the paper's default), ``d_initial`` (Λ_d's start, 0.1), ``dropout``,
``target_modules`` (LoRA's defaults: the query and value projections), ``layers`` and
``projection_seed``. Forward FLOPs per position are LoRA's at rank r, ``2·r·(d_in + d_out)``
(the scalings are elementwise).
"""

from __future__ import annotations

from typing import ClassVar

from peft import TaskType, VeraConfig, get_peft_model
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.lora import attention_targets, matches
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import Kind, MethodSpec


class VeraSpec(MethodSpec):
    kind: ClassVar[Kind] = "reparameterised"
    calls_base_linears: ClassVar[bool] = True
    description: ClassVar[str] = "scaling vectors around shared frozen random A, B"
    image_families: ClassVar[frozenset[str]] = frozenset({"vit", "clip", "vilt"})
    # ASSUMPTION: near LoRA on GLUE with far fewer parameters (Kopiczko et al., 2024), but
    # with little capacity to spare on skewed client data: between IA3 and LoRA.
    gain_prior: ClassVar[float | None] = 0.7

    r: PositiveInt = 256
    d_initial: float = Field(0.1, description="Λ_d's initial value")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    layers: list[NonNegativeInt] | None = None
    projection_seed: NonNegativeInt = 0

    def targets(self, arch: Architecture) -> list[Linear]:
        names = self.target_modules or attention_targets(arch)
        return [
            lin
            for lin in arch.linears
            if any(matches(lin.name, t) for t in names)
            and (self.layers is None or (lin.layer is not None and lin.layer in self.layers))
        ]

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        if not self.targets(arch):
            raise FedpeftError(
                f"`peft.target_modules` {self.target_modules or attention_targets(arch)} with "
                f"`peft.layers` {self.layers or 'all'} matches no projection of this model."
            )
        config = VeraConfig(
            task_type=TaskType(arch.peft_task) if arch.peft_task else None,
            modules_to_save=list(arch.head_names)
            if not arch.peft_task and arch.head_params
            else None,
            r=self.r,
            d_initial=self.d_initial,
            vera_dropout=self.dropout,
            target_modules=self.target_modules or attention_targets(arch),
            layers_to_transform=self.layers,
            projection_prng_key=self.projection_seed,
            save_projection=False,  # regenerated from the seed: only Λ_b, Λ_d travel
        )
        return get_peft_model(model, config)

    def trainable_params(self, arch: Architecture) -> int:
        return sum(self.r + lin.d_out for lin in self.targets(arch)) + arch.head_params

    def added_params(self, arch: Architecture) -> int:
        """The scalings, and the shared ``A`` and ``B`` at the largest adapted shape."""
        targets = self.targets(arch)
        if not targets:
            return 0
        shared = self.r * (max(t.d_in for t in targets) + max(t.d_out for t in targets))
        return super().added_params(arch) + shared

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return sum(
            (lin.positions or seq_len) * 2 * self.r * (lin.d_in + lin.d_out)
            for lin in self.targets(arch)
        )

    def lowest_trained_block(self, arch: Architecture) -> int | None:
        return self._lowest_block(arch, self.layers)


register_method("vera", VeraSpec)
