"""Allocation policy registry: a config name → a function choosing one client's candidate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.allocation.utility import Allocation, AllocationProblem, ClientInfo

Policy = Callable[["AllocationProblem", "ClientInfo"], "Allocation"]
_REGISTRY: dict[str, Policy] = {}


def register_policy(name: str, policy: Policy) -> None:
    if name in _REGISTRY:
        raise ValueError(f"allocation policy {name!r} is registered twice")
    _REGISTRY[name] = policy


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(name: str) -> Policy:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`allocation.policy` is {name!r}, which is not a registered policy; "
            f"expected one of: {', '.join(policy_names())}."
        )
    return _REGISTRY[name]
