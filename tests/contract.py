"""Checks every PEFT method's contract tests share across model families (imported by the
families' ``test_*_methods.py``): the adapter state round-trips exactly and refuses unknown
keys, a model's FLOPs as a counter measures them, and an export reloads with the same
outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state, load_adapter, save_adapter, set_adapter_state


def check_state_round_trip(model: torch.nn.Module, seed: int = 3) -> None:
    """Random values for every adapter tensor come back exactly; a key the model lacks is
    refused."""
    g = torch.Generator().manual_seed(seed)
    changed = {
        k: torch.randn(v.shape, generator=g, dtype=v.dtype)
        for k, v in get_adapter_state(model).items()
    }
    set_adapter_state(model, changed)
    again = get_adapter_state(model)
    assert again.keys() == changed.keys()
    assert all(torch.equal(again[k], changed[k]) for k in changed)
    with pytest.raises(FedpeftError, match="keys the model lacks"):
        set_adapter_state(model, {**changed, "not.a.key": torch.zeros(1)})


def flops(model: torch.nn.Module, inputs: dict[str, object]) -> int:
    """The forward pass's FLOPs as ``torch.utils.flop_counter`` counts them."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


def check_export_reloads(
    model: torch.nn.Module,
    name: str,
    method: str,
    spec: Any,
    fresh: Callable[[], torch.nn.Module],
    outputs: Callable[[torch.nn.Module], torch.Tensor],
    folder: Path,
) -> None:
    """The adapter, moved off its initialisation and exported, loads onto ``fresh()`` (plain
    PEFT for LoRA-style methods, fedpeft's loader for the selective ones) with the same
    outputs."""
    g = torch.Generator().manual_seed(5)
    state = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    save_adapter(model, state, folder, name, method, spec)
    reloaded = load_adapter(fresh(), folder).eval()
    torch.testing.assert_close(outputs(reloaded), outputs(model))
