"""The one get/set pair for adapter state, with PEFT's stable (adapter-name-free) keys."""

from __future__ import annotations

from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState


def get_adapter_state(model: PeftModel) -> AdapterState:
    """A detached copy of every trained tensor (adapters and trained head)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_state(model: PeftModel, state: AdapterState) -> None:
    """Loads ``state`` into ``model`` in place; every key must be one of the model's."""
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise FedpeftError(f"adapter state has keys the model lacks, e.g. {unexpected[0]!r}.")


def state_nbytes(state: AdapterState) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def state_numel(state: AdapterState) -> int:
    return sum(t.numel() for t in state.values())
