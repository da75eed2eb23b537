"""PEFT methods behind one registry, and the adapter-state get/set pair."""

from fedpeft.peft import lora as _lora  # noqa: F401 - registers "lora"
from fedpeft.peft.registry import (
    PeftMethod,
    apply_peft,
    get_method,
    method_names,
    register_method,
)
from fedpeft.peft.state import get_adapter_state, set_adapter_state, state_nbytes, state_numel

__all__ = [
    "PeftMethod",
    "apply_peft",
    "get_method",
    "get_adapter_state",
    "method_names",
    "register_method",
    "set_adapter_state",
    "state_nbytes",
    "state_numel",
]
