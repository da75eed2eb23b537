"""LoRA through Hugging Face ``peft``: ``h = W₀x + (α/r)·B A x`` (Hu et al., 2021).

Options: rank ``r``, ``alpha``, ``dropout``, ``target_modules`` (default: the family's
attention query and value projections, ``Architecture.lora_targets``), ``layers`` (which
blocks get adapters) and ``rank_pattern`` (a per-module rank, keyed like PEFT's: a module
name suffix or regex). A classifier's head trains too (PEFT's ``modules_to_save`` for
``SEQ_CLS``) and travels with the adapter; a causal LM's head stays frozen (``CAUSAL_LM``).
"""

from __future__ import annotations

import re

from peft import LoraConfig, TaskType, get_peft_model
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.registry import MethodSpec, PeftMethod, register_method


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a string target: the module name or one of its dotted suffixes."""
    return name == target or name.endswith("." + target)


class LoraSpec(MethodSpec):
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
        return self.target_modules or list(arch.lora_targets)

    def _rank(self, name: str) -> int:
        for key, rank in self.rank_pattern.items():
            if re.match(rf"(.*\.)?({key})$", name):
                return rank
        return self.r

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        bad = [t for t in self.target_names(arch) if any(t.endswith(u) for u in arch.unadaptable)]
        if bad:
            raise FedpeftError(
                f"`peft.target_modules` names {bad}, which LoRA cannot adapt in this model; "
                f"its adaptable modules end in {sorted({_suffix(lin) for lin in arch.linears})}."
            )
        if not self.targets(arch):
            raise FedpeftError(
                f"`peft.target_modules` {self.target_modules or list(arch.lora_targets)} with "
                f"`peft.layers` {self.layers or 'all'} matches no projection of this model "
                f"(blocks 0–{arch.layers - 1}; default targets {list(arch.lora_targets)})."
            )
        config = LoraConfig(
            task_type=TaskType(arch.peft_task) if arch.peft_task else None,
            modules_to_save=[arch.head_prefix] if not arch.peft_task and arch.head_params else None,
            r=self.r,
            lora_alpha=self.alpha,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=self.target_names(arch),
            layers_to_transform=self.layers,
            rank_pattern=dict(self.rank_pattern),
        )
        return get_peft_model(model, config)

    def trainable_params(self, arch: Architecture) -> int:
        return sum(r * (lin.d_in + lin.d_out) for lin, r in self.targets(arch)) + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return sum(
            (lin.positions or seq_len) * 2 * r * (lin.d_in + lin.d_out)
            for lin, r in self.targets(arch)
        )


def _suffix(lin: Linear) -> str:
    return lin.name.rsplit(".", 1)[-1]


register_method(PeftMethod("lora", LoraSpec, "reparameterised", "low-rank updates ΔW = (α/r)·BA"))
