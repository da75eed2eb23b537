"""The one get/set pair for adapter state.

For methods built on Hugging Face ``peft`` the keys are PEFT's (adapter name stripped,
as in ``adapter_model.safetensors``); for fedpeft's own methods they are the names of the
trainable parameters. Either way the keys are stable across processes.

A model may also hold frozen merged updates (FLoRA's residual, ``peft/flora.py``): a buffer
``merged_weight`` on a module, keyed ``<module>.merged_weight``. It belongs to the state
(the server's global, evaluation, checkpoints, export) but is never trained; clients get it
beside the adapter and do not send it back (``without_merged``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

MERGED = "merged_weight"  # a module's frozen merged update (FLoRA's residual)


def get_adapter_state(model: nn.Module) -> AdapterState:
    """A detached copy of every trained tensor (the method's parameters and the head), and of
    every merged update the model holds."""
    merged = {k: v.detach().clone() for k, v in merged_buffers(model).items()}
    if isinstance(model, PeftModel):
        peft_state = get_peft_model_state_dict(model).items()
        return {k: v.detach().clone() for k, v in peft_state} | merged
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return trained | merged


def merged_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<module>.merged_weight`` → that buffer, for every module holding one (none for a
    method without merged updates)."""
    return {
        f"{name}.{MERGED}" if name else MERGED: buf
        for name, module in model.named_modules()
        if isinstance(buf := getattr(module, MERGED, None), torch.Tensor)
    }


def is_merged(key: str) -> bool:
    return key == MERGED or key.endswith("." + MERGED)


def without_merged(state: AdapterState) -> AdapterState:
    """``state`` without its merged updates: what a client trained and sends back."""
    return {k: v for k, v in state.items() if not is_merged(k)}


def set_adapter_state(model: nn.Module, state: AdapterState) -> None:
    """Loads ``state`` into ``model`` in place; every key must be one of its trained tensors
    or merged updates."""
    merged = {k: v for k, v in state.items() if is_merged(k)}
    if merged:
        buffers = merged_buffers(model)
        _check_keys(merged, buffers.keys())
        with torch.no_grad():
            for key, value in merged.items():
                if value.shape != buffers[key].shape:
                    raise FedpeftError(
                        f"merged update {key!r} is {tuple(value.shape)}, the model's "
                        f"{tuple(buffers[key].shape)}."
                    )
                buffers[key].copy_(value)
        state = without_merged(state)
        if not state:  # merged updates only (PEFT refuses an empty load)
            return
    if isinstance(model, PeftModel):
        # PEFT's load result lists prompt embeddings as "unexpected" although it loads them
        # by another path, so the keys are checked against PEFT's own key set instead.
        _check_keys(state, get_peft_model_state_dict(model).keys())
        set_peft_model_state_dict(model, state)
        return
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    _check_keys(state, params.keys())
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter-state key → the trained parameter it reads (shared storage), so that a
    client can act on gradients key by key (e.g. SCAFFOLD's correction)."""
    params = {p.data_ptr(): p for p in model.parameters() if p.requires_grad}
    if isinstance(model, PeftModel):
        state = get_peft_model_state_dict(model)
        out = {k: params[v.data_ptr()] for k, v in state.items() if v.data_ptr() in params}
        if len(out) != len(state):
            raise FedpeftError("some adapter-state tensors are not trained parameters.")
        return out
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _check_keys(state: AdapterState, known: Iterable[str]) -> None:
    unknown = sorted(state.keys() - set(known))
    if unknown:
        raise FedpeftError(f"adapter state has keys the model lacks, e.g. {unknown[0]!r}.")


def state_nbytes(state: AdapterState) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def state_numel(state: AdapterState) -> int:
    return sum(t.numel() for t in state.values())
