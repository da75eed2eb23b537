"""FLoRA (Wang et al., 2024, NeurIPS, "FLoRA: Federated Fine-Tuning Large Language Models
with Heterogeneous Low-Rank Adaptations"): LoRA whose aggregate is merged into the model.

Each round the server stacks the clients' modules, ``ΔW = Σ_c p_c B_c A_c`` exactly (no
cross terms, any ranks), merges it into the weights and starts a fresh LoRA (``B = 0``, a
new random ``A``), so the model after round ``t`` is::

    h = W₀x + s·(Σ_{τ≤t} ΔW_τ) x + s·B A x,     s = α / r

The merged sum is a frozen ``merged_weight`` buffer on each adapted layer, added by a forward
hook, instead of a write into ``W₀``: the simulator's clients share one frozen base
(``peft.share``), and the buffer travels with the adapter state (``peft/state.py``) to every
place that loads a global (clients, evaluation workers, checkpoints, the exported folder).
The cost is one more dense product per adapted layer and step. The server half (stacking,
merging, the fresh LoRA) is ``server/merge.py``; clients get the merged sum beside the
adapter (``x/merged/…``) and send back only their LoRA and head.

PEFT has no such method (its LoRA merges into the base only at export), and FLoRA's own
code merges by rewriting the base weights of one model per client, which a shared base
cannot take: hence this module.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture
from fedpeft.peft.lora import LoraSpec
from fedpeft.peft.registry import register_method
from fedpeft.peft.state import MERGED


class FloraSpec(LoraSpec):
    description: ClassVar[str] = "LoRA merged into the model every round, then restarted (FLoRA)"
    calls_base_linears: ClassVar[bool] = False  # adds its merged sum beside W₀
    image_families: ClassVar[frozenset[str]] = frozenset({"vit", "clip"})  # linear layers
    # ASSUMPTION: exact aggregation, so at least plain LoRA's prior (Wang et al., 2024).
    gain_prior: ClassVar[float | None] = 0.75
    envelope_group: ClassVar[str | None] = None  # a merged base is its own group's

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        model = super().apply(model, arch)
        attach_merged(model)
        return model

    def added_params(self, arch: Architecture) -> int:
        """LoRA's, plus the merged sum (out × in) of every adapted layer."""
        return super().added_params(arch) + self._merged_params(arch)

    def down_only_bytes(self, arch: Architecture, bytes_per_param: int = 4) -> int:
        """The merged sums each payload carries (float32), which replies do not."""
        return self._merged_params(arch) * bytes_per_param

    def _merged_params(self, arch: Architecture) -> int:
        return sum(lin.d_in * lin.d_out for lin, _ in self.targets(arch))

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        """LoRA's, plus the merged sum's dense product on every adapted layer."""
        dense = sum(
            (lin.positions or seq_len) * 2 * lin.d_in * lin.d_out for lin, _ in self.targets(arch)
        )
        return super().extra_flops(arch, seq_len) + dense

    def envelope_alpha(self) -> float | None:
        return None


def attach_merged(model: nn.Module) -> int:
    """A zero ``merged_weight`` buffer (out × in) and the hook adding ``s·merged·x`` on every
    LoRA-adapted linear layer of ``model``; the number of layers. A LoRA on another kind of
    layer (a convolution, an embedding) is refused: FLoRA's merge is defined for matrices."""
    count = 0
    for name, module in model.named_modules():
        if not _is_lora(module) or hasattr(module, MERGED):  # attached once: one hook
            continue
        base = module.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise FedpeftError(
                f"`peft.method = 'flora'` merges into linear layers only; {name!r} is a "
                f"{type(base).__name__}. Choose linear `peft.target_modules` or `lora`."
            )
        weight = base.weight
        module.register_buffer(MERGED, torch.zeros_like(weight, requires_grad=False), False)
        module.register_forward_hook(_add_merged)
        count += 1
    if not count and not any(hasattr(m, MERGED) for m in model.modules()):
        raise FedpeftError("`peft.method = 'flora'` found no LoRA layer to merge into.")
    return count


def merge_and_unload(model: nn.Module) -> nn.Module:
    """The plain base model with every merged sum and LoRA written into its weights
    (``W₀ + (α/r)(ΔW + BA)``), for a FLoRA model loaded by ``load_adapter``. PEFT's own
    ``merge_and_unload`` merges ``BA`` only and drops the hooks, so ``ΔW`` would be lost.
    The base's weights are written: load it afresh for this, not from a shared base."""
    with torch.no_grad():
        for module in model.modules():
            merged = getattr(module, MERGED, None)
            if _is_lora(module) and isinstance(merged, torch.Tensor):
                lora: Any = module  # a PEFT LoRA layer (mixin attributes mypy cannot see)
                weight = lora.get_base_layer().weight
                scale = lora.scaling[lora.active_adapters[0]]
                weight += (scale * merged).to(weight.dtype)
    unload = getattr(model, "merge_and_unload", None)
    if unload is None:
        raise FedpeftError("`merge_and_unload` needs a PEFT model (from `load_adapter`).")
    out: nn.Module = unload()
    return out


def _is_lora(module: nn.Module) -> bool:
    return isinstance(module, LoraLayer)


def _add_merged(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    """``out + s·x·mergedᵀ`` (``s`` the layer's LoRA scale α/r)."""
    merged = getattr(module, MERGED)
    scale = module.scaling[module.active_adapters[0]]  # type: ignore[index]
    x = args[0]
    return out + scale * F.linear(x, merged.to(x.dtype)).to(out.dtype)


register_method("flora", FloraSpec)
