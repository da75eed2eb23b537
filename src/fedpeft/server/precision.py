"""The precision a run computes in: bf16 autocast where the device has it natively
(``run.autocast``), around every forward pass and generation, and the frozen linear
weights stored in that dtype where results stay bit-equal (``run.frozen_bf16``,
``fedpeft.models.precision``)."""

from __future__ import annotations

import torch
from torch import nn

from fedpeft.config import ExperimentConfig
from fedpeft.models import ModelSpec, is_vision_model
from fedpeft.peft import MethodSpec


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``run.autocast``: bfloat16 when asked, or (auto) on a CUDA device that supports it or
    a CPU with native bf16 arithmetic; ``None``: float32 throughout."""
    if mode != "auto":
        return torch.bfloat16 if mode == "bf16" else None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and native_cpu_bf16()
    return torch.bfloat16 if native else None


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles). Where it does, bf16
    autocast trained MiniLM 1.5-1.6x faster at float32's accuracy on SST-2, AG News and
    Banking77 (BENCHMARKS, issue 19, 2026-12-06); where it does not, bf16 is emulated and
    14x slower (2026-12-05). torch names the test only privately, hence the guard."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # another torch build: stay in float32
        return False


def with_autocast(model: nn.Module, mode: str) -> nn.Module:
    """``model`` (in place) with its forward, and a causal LM's ``generate``, under autocast
    when ``mode`` asks for it; backward runs outside it, as PyTorch recommends. Parameters,
    states and updates stay float32. (On a CPU, training's attention may run in float32
    where evaluation's runs in bf16: ``fedpeft.models.dropout.sdpa_on_cpu``.) Generation
    under bf16 on a trained SmolLM2 LoRA: 1.6-1.9x faster, the same predicted class for
    99.0-99.7 % of examples as in float32 (BENCHMARKS issue 19)."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(mode, device)
    if dtype is not None:
        model.forward = torch.autocast(device.type, dtype=dtype)(model.forward)
        if callable(getattr(model, "generate", None)):  # it calls the inner model's forward
            model.generate = torch.autocast(device.type, dtype=dtype)(model.generate)
    return model


def stores_frozen_low(
    cfg: ExperimentConfig, method: MethodSpec, kind: str, spec: ModelSpec
) -> bool:
    """``run.frozen_bf16`` for this run: a text model whose method only calls the frozen
    linear layers (every pass under autocast, ``generate``'s too), and a run that builds no
    second model over the base whose starting adapter matters (the allocation's other
    configurations, dual personal LoRAs, the personal baselines): peft would create those
    adapters in the stored dtype, rounding their initial values, where every other run is
    bit-equal to float32 storage."""
    p = cfg.personalization
    return (
        cfg.run.frozen_bf16
        and type(method).calls_base_linears
        and kind in ("classify", "instruct", "qa")
        and not is_vision_model(spec)
        and not cfg.allocation.enabled
        and p.mode != "dual"
        and not p.baselines
    )
