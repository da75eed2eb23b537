"""Allocation policy registry: a config name → a function choosing one client's candidate.

A policy that ignores the devices' limits (the ``unconstrained`` upper bound) says so when
it registers, and the device simulation then lets its clients run past them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.allocation.utility import Allocation, AllocationProblem, ClientInfo

Policy = Callable[["AllocationProblem", "ClientInfo"], "Allocation"]
_REGISTRY: dict[str, Policy] = {}
_IGNORES_LIMITS: set[str] = set()


def register_policy(name: str, policy: Policy, *, ignores_limits: bool = False) -> None:
    if name in _REGISTRY:
        raise ValueError(f"allocation policy {name!r} is registered twice")
    _REGISTRY[name] = policy
    if ignores_limits:
        _IGNORES_LIMITS.add(name)


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def ignores_limits(name: str) -> bool:
    """Whether the policy assigns configurations regardless of memory and the deadline."""
    get_policy(name)
    return name in _IGNORES_LIMITS


def get_policy(name: str) -> Policy:
    if name not in _REGISTRY:
        raise FedpeftError(
            f"`allocation.policy` is {name!r}, which is not a registered policy; "
            f"expected one of: {', '.join(policy_names())}."
        )
    return _REGISTRY[name]
