"""LoRA through Hugging Face ``peft``: ``h = W₀x + (α/r)·B A x`` (Hu et al., 2021).

Options: rank ``r``, ``alpha``, ``dropout``, ``target_modules`` (default: the attention
query and value projections, as Hu et al. adapt ``W_q`` and ``W_v``; a CNN's 1×1
convolutions), ``layers`` (which blocks get adapters) and ``rank_pattern`` (a per-module
rank, keyed like PEFT's: a module name suffix or regex). A classifier's head trains too
(PEFT's ``modules_to_save`` for ``SEQ_CLS``) and travels with the adapter; a causal LM's
head stays frozen (``CAUSAL_LM``).

In a heterogeneous federation every LoRA configuration joins one group, ``lora``, whose
global is the envelope of all ranks and placements, its factors kept at the scale α
(``aggregation.hetero``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from peft import LoraConfig, TaskType, get_peft_model
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import Kind, MethodSpec

T = TypeVar("T", int, str)


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a string target: the module name or one of its dotted suffixes."""
    return name == target or name.endswith("." + target)


def attention_targets(arch: Architecture) -> list[str]:
    """The query and value projections (Hu et al., 2021), or a CNN's 1×1 convolutions."""
    return list(arch.roles.query + arch.roles.value or arch.roles.pointwise)


class LoraSpec(MethodSpec):
    kind: ClassVar[Kind] = "reparameterised"
    calls_base_linears: ClassVar[bool] = True
    description: ClassVar[str] = "low-rank updates ΔW = (α/r)·BA"
    image_families: ClassVar[frozenset[str]] = frozenset(
        {"efficientnet", "centernet", "vit", "clip", "vilt", "yolos"}
    )
    # ASSUMPTION from small-encoder GLUE results at equal budget (Hu et al., 2021; He et
    # al., 2022): on par with adapters, below full fine-tuning.
    gain_prior: ClassVar[float | None] = 0.75
    envelope_group: ClassVar[str | None] = "lora"

    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    layers: list[NonNegativeInt] | None = None
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict)

    @field_validator("rank_pattern")
    @classmethod
    def _patterns_compile(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            try:
                re.compile(key)
            except re.error as e:
                raise ValueError(f"rank_pattern key {key!r} is not a valid regex ({e})") from None
        return value

    def targets(self, arch: Architecture) -> list[tuple[Linear, int]]:
        """(projection, rank) for every adapted projection."""
        names = self.target_names(arch)
        out = []
        for lin in arch.linears:
            if not any(matches(lin.name, t) for t in names):
                continue
            if self.layers is not None and (lin.layer is None or lin.layer not in self.layers):
                continue
            out.append((lin, self._rank(lin.name)))
        return out

    def target_names(self, arch: Architecture) -> list[str]:
        """The configured targets, or the family's default ones."""
        return self.target_modules or attention_targets(arch)

    def _rank(self, name: str) -> int:
        for key, rank in self.rank_pattern.items():
            if re.match(rf"(.*\.)?({key})$", name):
                return rank
        return self.r

    def lora_config(self, arch: Architecture) -> LoraConfig:
        """PEFT's configuration of this spec (a variant such as DoRA extends it)."""
        return LoraConfig(
            task_type=TaskType(arch.peft_task) if arch.peft_task else None,
            modules_to_save=list(arch.head_names)
            if not arch.peft_task and arch.head_params
            else None,
            r=self.r,
            lora_alpha=self.alpha,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=self.target_names(arch),
            layers_to_transform=self.layers,
            rank_pattern=dict(self.rank_pattern),
        )

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        bad = [t for t in self.target_names(arch) if any(t.endswith(u) for u in arch.unadaptable)]
        if bad:
            raise FedpeftError(
                f"`peft.target_modules` names {bad}, which LoRA cannot adapt in this model; "
                f"its adaptable modules end in {sorted({_suffix(lin) for lin in arch.linears})}."
            )
        if not self.targets(arch):
            raise FedpeftError(
                f"`peft.target_modules` {self.target_names(arch)} with "
                f"`peft.layers` {self.layers or 'all'} matches no projection of this model "
                f"(blocks 0–{arch.layers - 1}; default targets {attention_targets(arch)})."
            )
        return get_peft_model(model, self.lora_config(arch))

    def trainable_params(self, arch: Architecture) -> int:
        return sum(r * (lin.d_in + lin.d_out) for lin, r in self.targets(arch)) + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return sum(
            (lin.positions or seq_len) * 2 * r * (lin.d_in + lin.d_out)
            for lin, r in self.targets(arch)
        )

    def lowest_trained_block(self, arch: Architecture) -> int | None:
        return self._lowest_block(arch, self.layers)

    def envelope_alpha(self) -> float | None:
        return self.alpha

    @classmethod
    def envelope(cls, members: Sequence[MethodSpec]) -> MethodSpec:
        """The LoRA covering every member: the largest rank with its α and other options
        (ties to the later member), the union of the members' layers and of their target
        modules — ``None`` (every block; the family's default targets) when any member has
        ``None``. Without the architecture the defaults cannot be named, so a member with
        explicit targets outside them is not covered then."""
        specs = [m for m in members if isinstance(m, LoraSpec)]
        top = max(enumerate(specs), key=lambda pair: (pair[1].r, pair[0]))[1]
        layers = _union([s.layers for s in specs])
        targets = _union([s.target_modules for s in specs])
        return top.model_copy(update={"layers": layers, "target_modules": targets})


def _union(parts: Sequence[Sequence[T] | None]) -> list[T] | None:
    """The sorted union of every part, or ``None`` when any part is ``None`` (everything)."""
    if any(p is None for p in parts):
        return None
    return sorted({x for p in parts if p is not None for x in p})


def _suffix(lin: Linear) -> str:
    return lin.name.rsplit(".", 1)[-1]


register_method("lora", LoraSpec)
