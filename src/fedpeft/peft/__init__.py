"""PEFT methods behind one registry, the adapter-state get/set pair, and adapter folders.

Each method is one module that defines its spec (``MethodSpec``: its options and every
fact fedpeft needs about it) and registers it; the import list below is the only place
that names them. ``method_names()`` lists what is registered.
"""

from fedpeft.peft import bottleneck as _bottleneck  # noqa: F401 - registers its methods
from fedpeft.peft import dora as _dora  # noqa: F401
from fedpeft.peft import federa as _federa  # noqa: F401
from fedpeft.peft import flora as _flora  # noqa: F401
from fedpeft.peft import ia3 as _ia3  # noqa: F401
from fedpeft.peft import lora as _lora  # noqa: F401
from fedpeft.peft import prompt as _prompt  # noqa: F401
from fedpeft.peft import selective as _selective  # noqa: F401
from fedpeft.peft import slora as _slora  # noqa: F401
from fedpeft.peft import sparse as _sparse  # noqa: F401
from fedpeft.peft import vera as _vera  # noqa: F401
from fedpeft.peft.arch import Architecture
from fedpeft.peft.families import architecture, model_architecture
from fedpeft.peft.io import load_adapter, save_adapter
from fedpeft.peft.ref import MethodRef, parse_method_ref
from fedpeft.peft.registry import (
    PeftMethod,
    get_method,
    method_names,
    methods_for,
    parse_spec,
    register_method,
)
from fedpeft.peft.spec import MethodSpec
from fedpeft.peft.state import get_adapter_state, set_adapter_state, state_nbytes, state_numel
from fedpeft.peft.support import check_supported, supported_methods, supports

__all__ = [
    "Architecture",
    "MethodRef",
    "MethodSpec",
    "PeftMethod",
    "architecture",
    "model_architecture",
    "check_supported",
    "get_adapter_state",
    "get_method",
    "load_adapter",
    "method_names",
    "methods_for",
    "parse_method_ref",
    "parse_spec",
    "register_method",
    "save_adapter",
    "set_adapter_state",
    "state_nbytes",
    "state_numel",
    "supported_methods",
    "supports",
]
