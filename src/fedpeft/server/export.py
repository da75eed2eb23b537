"""Exports the global adapter into the run folder (a PEFT folder for ``peft`` methods)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fedpeft.models import ModelSpec
from fedpeft.peft import MethodSpec, save_adapter
from fedpeft.server.store import RunStore
from fedpeft.types import AdapterState


def export_adapter(
    model: nn.Module,
    state: AdapterState,
    spec: ModelSpec,
    method: str,
    options: MethodSpec,
    store: RunStore,
) -> Path:
    tmp = store.adapter_tmp()
    save_adapter(model, state, tmp, spec.hub_id, method, options)
    return store.commit_adapter(tmp)
