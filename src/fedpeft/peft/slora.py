"""SLoRA's second stage: LoRA started from the SVD of the first stage's sparse update
(Babakniya et al., 2023, "SLoRA: Federated Parameter Efficient Fine-Tuning of Language
Models", §4)::

    ΔW_sparse = U Σ Vᵀ,   B = U_r √(Σ_r / s),   A = √(Σ_r / s) V_rᵀ,   s = α / r

so the adapter starts at ``s·B A = U_r Σ_r V_rᵀ``, the best rank-r approximation of what
the federation learned in stage 1 (``sparse``, a federated run on a fixed random mask), on
the unchanged frozen ``W₀``; the stage-1 head carries over. ``init_from`` names the stage-1
run (its folder or its ``adapter/``). The experiment runner's ``slora`` baseline chains the
two runs (``fedpeft.experiment.presets``).

Without ``init_from`` there is no stage-1 update to decompose and this is plain LoRA.
Stage 1's updates outside LoRA's targets, and the part of each update beyond rank r, are
dropped at the switch — a choice of this implementation where the paper is not specific.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture
from fedpeft.peft.lora import LoraSpec
from fedpeft.peft.registry import parse_spec, register_method
from fedpeft.peft.sparse import SparseSpec

log = logging.getLogger("fedpeft.peft")
STAGE1_CONFIG = "fedpeft_adapter.json"
STAGE1_WEIGHTS = "adapter_model.safetensors"


class SloraSpec(LoraSpec):
    description: ClassVar[str] = "LoRA started from the SVD of a sparse stage-1 update (SLoRA)"
    calls_base_linears: ClassVar[bool] = False  # carries stage 1 over
    # ASSUMPTION: above LoRA under strong label skew, as Babakniya et al. (2023) report.
    gain_prior: ClassVar[float | None] = 0.76
    envelope_group: ClassVar[str | None] = None  # its start differs from LoRA's envelope
    image_families: ClassVar[frozenset[str]] = frozenset({"vit"})  # where stage 1 runs

    init_from: str | None = None

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        if self.init_from is None:
            log.warning("slora without `peft.init_from` is plain LoRA (no stage-1 update)")
            return super().apply(model, arch)
        sparse, state = read_stage1(Path(self.init_from))
        _replace_head(model, arch, state)
        peft_model = super().apply(model, arch)
        updates = sparse.dense_updates(arch, state)
        for lin, _ in self.targets(arch):
            if lin.name in updates:
                init_from_update(_lora_layer(peft_model, lin.name), updates[lin.name])
        return peft_model

    def envelope_alpha(self) -> float | None:
        return None


def read_stage1(path: Path) -> tuple[SparseSpec, dict[str, torch.Tensor]]:
    """The stage-1 ``sparse`` spec and trained state from a run folder or its ``adapter/``."""
    folder = path / "adapter" if (path / "adapter").is_dir() else path
    meta_path = folder / STAGE1_CONFIG
    if not meta_path.is_file():
        raise FedpeftError(
            f"`peft.init_from` {str(path)!r} holds no stage-1 adapter ({STAGE1_CONFIG}); "
            "point it at a finished run of `peft.method = 'sparse'`."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise FedpeftError(f"{meta_path} is not valid JSON; the stage-1 run is damaged.") from None
    method = meta.get("method") if isinstance(meta, dict) else None
    if method != "sparse":
        raise FedpeftError(
            f"`peft.init_from` {str(path)!r} holds a run of {method!r}; SLoRA starts from a "
            "run of `peft.method = 'sparse'`."
        )
    spec = parse_spec("sparse", dict(meta.get("options") or {}))
    if not isinstance(spec, SparseSpec):  # the registry maps "sparse" to SparseSpec
        raise FedpeftError("the registered `sparse` method is not SLoRA's stage 1.")
    return spec, load_file(str(folder / STAGE1_WEIGHTS))


def init_from_update(layer: Any, update: torch.Tensor) -> None:
    """Sets one PEFT LoRA layer's ``A`` and ``B`` (in place) so that ``s·B A`` is the best
    rank-r approximation of ``update`` (``d_out × d_in``)."""
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    r, s = a.shape[0], float(layer.scaling["default"])
    u, sigma, vh = torch.linalg.svd(update.to(torch.float32), full_matrices=False)
    root = torch.sqrt(sigma[:r] / s)
    with torch.no_grad():
        b.copy_((u[:, :r] * root).to(b.dtype))
        a.copy_((root[:, None] * vh[:r]).to(a.dtype))


def _lora_layer(model: nn.Module, name: str) -> nn.Module:
    inner: Any = model.base_model.model if isinstance(model, PeftModel) else model
    return cast(nn.Module, inner.get_submodule(name))


def _replace_head(model: nn.Module, arch: Architecture, state: dict[str, torch.Tensor]) -> None:
    """Stage 1's trained head, as new parameters on ``model``'s own head modules (a shared
    base's tensors are never written)."""
    prefixes = tuple(h + "." for h in arch.head_names)
    for key, value in state.items():
        if not key.startswith(prefixes) or arch.head_params == 0:
            continue
        module_name, _, param = key.rpartition(".")
        module = model.get_submodule(module_name)
        old = module._parameters.get(param)
        if old is None or old.shape != value.shape:
            raise FedpeftError(f"the stage-1 head tensor {key!r} does not fit this model's head.")
        module._parameters[param] = nn.Parameter(value.clone().to(old.dtype), requires_grad=True)


register_method("slora", SloraSpec)
