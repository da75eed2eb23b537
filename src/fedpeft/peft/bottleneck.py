"""Bottleneck adapters, which Hugging Face ``peft`` lacks (written here for that reason).

An adapter is ``h ↦ h + W_up·f(W_down·h + b_down) + b_up`` (Houlsby et al., 2019,
"Parameter-Efficient Transfer Learning for NLP"), inserted right after a sub-layer's
output projection, before its residual connection and LayerNorm. Houlsby places one after
attention and one after the feed-forward block; Pfeiffer et al. (2021, "AdapterFusion")
only after the feed-forward block. ``W_up`` and ``b_up`` start at zero, so an untrained
adapter leaves the model's outputs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import NonNegativeInt, PositiveInt
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import MethodSpec, head_params_trainable

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class BottleneckAdapter(nn.Module):
    def __init__(self, dim: int, size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdaptedProjection(nn.Module):
    """A frozen projection followed by its adapter: ``x ↦ adapter(W x + b)``."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def insert_adapters(model: nn.Module, sites: list[str], size: int, activation: str) -> None:
    """Wraps each named ``nn.Linear`` in an ``AdaptedProjection`` (in place); the new
    adapters are trainable, the wrapped projections keep their ``requires_grad``."""
    for name in sites:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"adapter site {name!r} is a {type(base).__name__}, not nn.Linear")
        adapter = BottleneckAdapter(base.out_features, size, activation).to(
            # trained in float32 even where the frozen base is stored lower (precision.py)
            device=base.weight.device,
            dtype=torch.promote_types(base.weight.dtype, torch.float32),
        )
        setattr(parent, child, AdaptedProjection(base, adapter))


class HoulsbySpec(MethodSpec):
    """Adapters after attention and after the feed-forward block (Houlsby et al., 2019)."""

    description: ClassVar[str] = "bottleneck adapters ×2 per block"
    calls_base_linears: ClassVar[bool] = True
    image_families: ClassVar[frozenset[str]] = frozenset({"vit", "vilt"})
    # ASSUMPTION: on par with LoRA at equal budget (He et al., 2022).
    gain_prior: ClassVar[float | None] = 0.75

    size: PositiveInt = 64
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    layers: list[NonNegativeInt] | None = None

    def sites(self, arch: Architecture) -> list[str]:
        names = set(arch.attn_out) | set(arch.ffn_out)
        return [lin.name for lin in arch.linears if lin.name in names and self._in_layers(lin)]

    def _in_layers(self, lin: Linear) -> bool:
        return self.layers is None or (lin.layer is not None and lin.layer in self.layers)

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        sites = self.sites(arch)
        if not sites:
            raise FedpeftError(
                f"`peft.layers` {self.layers} selects no block of this model "
                f"(it has blocks 0–{arch.layers - 1})."
            )
        head_params_trainable(model, arch)
        insert_adapters(model, sites, self.size, self.activation)
        return model

    def trainable_params(self, arch: Architecture) -> int:
        per_site = 2 * arch.hidden * self.size + self.size + arch.hidden
        return len(self.sites(arch)) * per_site + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return seq_len * len(self.sites(arch)) * 2 * (2 * arch.hidden * self.size)

    def lowest_trained_block(self, arch: Architecture) -> int | None:
        return self._lowest_block(arch, self.layers)


class PfeifferSpec(HoulsbySpec):
    """One adapter after the feed-forward block only (Pfeiffer et al., 2021)."""

    description: ClassVar[str] = "bottleneck adapter ×1 per block"
    # ASSUMPTION: slightly below Houlsby's two adapters at equal size (Pfeiffer et al., 2021).
    gain_prior: ClassVar[float | None] = 0.7

    def sites(self, arch: Architecture) -> list[str]:
        names = set(arch.ffn_out)
        return [lin.name for lin in arch.linears if lin.name in names and self._in_layers(lin)]


register_method("houlsby", HoulsbySpec)
register_method("pfeiffer", PfeifferSpec)
