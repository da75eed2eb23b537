"""Sparse fine-tuning on a fixed random mask: SLoRA's first stage (Babakniya et al., 2023,
"SLoRA: Federated Parameter Efficient Fine-Tuning of Language Models", §4)::

    W = W₀ + scatter_M(δ)

Every client trains the same ``density`` share of each targeted projection's entries, a
mask ``M`` drawn once from ``mask_seed`` and the projection's name (so every process draws
the same mask without sending it); ``δ`` holds the trained values at the mask's positions
and starts at zero, and only ``δ`` and the task head travel. ``slora`` (stage 2) starts
LoRA from the SVD of the ``scatter_M(δ)`` that a federated run of this method learned.

The paper fine-tunes the whole model sparsely; here the targets default to every
projection in the blocks (``target_modules`` narrows them, e.g. to LoRA's query/value).
The masked add costs ``d_in·d_out`` additions per projection and forward pass (counted as
no FLOPs, like every elementwise step).
"""

from __future__ import annotations

import zlib
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, NonNegativeInt
from torch import nn
from torch.nn import functional as F

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.lora import matches
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import Kind, MethodSpec, head_params_trainable

DELTA = "sparse_delta"  # the trained values' parameter name under each projection


def mask_indices(name: str, numel: int, density: float, seed: int) -> torch.Tensor:
    """The sorted flat positions ``M`` of one projection's trained entries: a seeded draw
    without replacement of ``max(1, round(density·numel))`` of its ``numel`` entries."""
    k = mask_size(numel, density)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return torch.from_numpy(np.sort(rng.choice(numel, size=k, replace=False))).long()


def mask_size(numel: int, density: float) -> int:
    return max(1, min(numel, round(density * numel)))


def scatter_update(index: torch.Tensor, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``scatter_M(δ)``: the dense ``shape`` update with ``values`` at the flat ``index``."""
    dense = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
    return dense.scatter(0, index.to(values.device), values).view(shape)


class SparseDeltaLinear(nn.Module):
    """A frozen projection with a trainable sparse update: ``x ↦ (W₀ + scatter_M(δ)) x + b``."""

    index: torch.Tensor

    def __init__(self, base: nn.Linear, index: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("index", index.to(base.weight.device), persistent=False)
        self.sparse_delta = nn.Parameter(
            torch.zeros(len(index), dtype=base.weight.dtype, device=base.weight.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base.weight
        return F.linear(
            x, w + scatter_update(self.index, self.sparse_delta, w.shape), self.base.bias
        )


class SparseSpec(MethodSpec):
    kind: ClassVar[Kind] = "selective"
    image_families: ClassVar[frozenset[str]] = frozenset({"vit"})
    description: ClassVar[str] = "sparse update of W on a fixed random mask (SLoRA stage 1)"
    # ASSUMPTION: between BitFit and full fine-tuning at ~1 % density (Babakniya et al.,
    # 2023, report sparse fine-tuning close to full fine-tuning on their tasks).
    gain_prior: ClassVar[float | None] = 0.7

    density: float = Field(0.01, gt=0.0, le=1.0)
    target_modules: list[str] | None = None
    mask_seed: NonNegativeInt = 0

    def targets(self, arch: Architecture) -> list[Linear]:
        """The masked projections: those named in ``target_modules`` (a name or a dotted
        suffix, as PEFT matches), or every linear projection inside the blocks."""
        out = []
        for lin in arch.linears:
            if lin.conv or lin.layer is None:
                continue
            if self.target_modules is None or any(
                matches(lin.name, t) for t in self.target_modules
            ):
                out.append(lin)
        return out

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        targets = self.targets(arch)
        if not targets:
            raise FedpeftError(
                f"`peft.target_modules` {self.target_modules} matches no linear projection in "
                f"the blocks of this model (e.g. {arch.linears[0].name if arch.linears else '—'})."
            )
        head_params_trainable(model, arch)
        for lin in targets:
            parent_name, _, child = lin.name.rpartition(".")
            parent = model.get_submodule(parent_name)
            base = getattr(parent, child)
            if not isinstance(base, nn.Linear):
                raise FedpeftError(f"sparse fine-tuning needs nn.Linear at {lin.name!r}.")
            index = mask_indices(lin.name, base.weight.numel(), self.density, self.mask_seed)
            setattr(parent, child, SparseDeltaLinear(base, index))
        return model

    def trainable_params(self, arch: Architecture) -> int:
        masked = sum(mask_size(lin.d_in * lin.d_out, self.density) for lin in self.targets(arch))
        return masked + arch.head_params

    def added_params(self, arch: Architecture) -> int:
        return self.trainable_params(arch) - arch.head_params

    def lowest_trained_block(self, arch: Architecture) -> int | None:
        layers = [lin.layer for lin in self.targets(arch) if lin.layer is not None]
        return min(layers) if layers else None

    def dense_updates(
        self, arch: Architecture, state: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Projection name → ``scatter_M(δ)`` (``d_out × d_in``) from a trained state."""
        out = {}
        for lin in self.targets(arch):
            key = f"{lin.name}.{DELTA}"
            if key not in state:
                raise FedpeftError(
                    f"the sparse adapter has no {key!r}; was it trained on this model?"
                )
            index = mask_indices(lin.name, lin.d_in * lin.d_out, self.density, self.mask_seed)
            out[lin.name] = scatter_update(
                index, state[key].float(), torch.Size((lin.d_out, lin.d_in))
            )
        return out


register_method("sparse", SparseSpec)
