"""Exports a global adapter as a standard PEFT folder (``PeftModel.from_pretrained`` loads it)."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from fedpeft.models import ModelSpec
from fedpeft.peft import set_adapter_state
from fedpeft.server.store import RunStore
from fedpeft.types import AdapterState


def export_adapter(model: PeftModel, state: AdapterState, spec: ModelSpec, store: RunStore) -> Path:
    set_adapter_state(model, state)
    # name the base by its hub id, not the local package folder it was loaded from
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = spec.hub_id
    tmp = store.adapter_tmp()
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    return store.commit_adapter(tmp)
