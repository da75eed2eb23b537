"""The ``[allocation]`` section validated against the registries.

The section's schema (``fedpeft.config.AllocationConfig``) checks types, ranges and
finiteness when the experiment configuration loads. What only the registries know — that
the policy is registered, that each candidate's method is and its options are valid for
it — is checked here, with errors that name ``allocation.<field>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from fedpeft.allocation.registry import policy_names
from fedpeft.config import AllocationConfig, CandidateConfig
from fedpeft.config.loading import describe_validation_error
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_method, method_names


def make_allocation_config(
    raw: AllocationConfig | Mapping[str, Any] | None = None, source: str = "config"
) -> AllocationConfig:
    """A validated config; problems raise ``FedpeftError`` naming ``allocation.<field>``."""
    if isinstance(raw, AllocationConfig):
        cfg = raw
    else:
        try:
            cfg = AllocationConfig.model_validate(dict(raw or {}))
        except ValidationError as e:
            message = describe_validation_error(e, prefix="allocation", model=AllocationConfig)
            raise FedpeftError(f"{source}: {message}") from None
    problem = registry_problem(cfg)
    if problem:
        raise FedpeftError(f"{source}: {problem}")
    return cfg


def registry_problem(cfg: AllocationConfig) -> str | None:
    """The first name the registries do not know, as a sentence; ``None`` when all do."""
    if cfg.policy not in policy_names():
        return _expected("allocation.policy", policy_names(), cfg.policy)
    for method in cfg.catalogue.others:
        if method not in method_names():
            return _expected("allocation.catalogue.others", method_names(), method)
    for field, candidate in _candidates(cfg):
        problem = candidate_problem(field, candidate)
        if problem:
            return problem
    return None


def _candidates(cfg: AllocationConfig) -> Iterator[tuple[str, CandidateConfig]]:
    if cfg.uniform is not None:
        yield "allocation.uniform", cfg.uniform
    for tier, candidate in cfg.tiers.items():
        yield f"allocation.tiers.{tier}", candidate
    for i, candidate in enumerate(cfg.catalogue.extra):
        yield f"allocation.catalogue.extra.{i}", candidate


def candidate_problem(field: str, candidate: CandidateConfig) -> str | None:
    """Why ``candidate`` (written at ``field``) is not a valid configuration, or ``None``."""
    if candidate.method not in method_names():
        return _expected(f"{field}.method", method_names(), candidate.method)
    spec = get_method(candidate.method).spec
    try:
        spec.model_validate(candidate.options)
    except ValidationError as e:
        err = e.errors()[0]
        detail = describe_validation_error(e).removesuffix(".")
        if err["type"] == "extra_forbidden":
            fields = ", ".join(spec.model_fields) or "none"
            detail = f"unknown option `{err['loc'][0]}` (its options: {fields})"
        return f"`{field}.options`: not valid for {candidate.method!r}: {detail}."
    return None


def _expected(field: str, names: list[str], got: str) -> str:
    return f"`{field}`: expected one of {', '.join(names)}, got {got!r}."
