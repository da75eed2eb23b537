"""The allocation settings: policy, utility weights, deadline, catalogue and gain prior."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedpeft.allocation.catalogue import CandidateConfig, CatalogueConfig
from fedpeft.allocation.gain import GainConfig
from fedpeft.allocation.registry import policy_names
from fedpeft.config.loading import describe_validation_error
from fedpeft.errors import FedpeftError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


class CostWeights(_Section):
    """Weights of the three parts of ``C`` (normalised to sum to 1 when used)."""

    time: float = Field(1.0, ge=0.0)
    memory: float = Field(1.0, ge=0.0)
    bytes: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> CostWeights:
        if self.time + self.memory + self.bytes <= 0:
            raise ValueError("`allocation.cost_weights` must have at least one positive weight")
        return self


class AllocationConfig(_Section):
    """``U(c,p) = α·R − β·C + γ·E`` under ``memory ≤ client memory`` and
    ``round time ≤ deadline_s``; ``uniform`` and ``tiers`` serve the fixed policies."""

    enabled: bool = Field(
        False, description="fedpeft run trains each client with its allocated configuration"
    )
    policy: str = "utility"
    alpha: float = Field(1.0, ge=0.0, description="α: weight of the expected gain R")
    beta: float = Field(1.0, ge=0.0, description="β: weight of the normalised cost C")
    gamma: float = Field(0.5, ge=0.0, description="γ: weight of the expressivity E")
    deadline_s: PositiveFloat = Field(120.0, description="round deadline, seconds")
    cost_weights: CostWeights = CostWeights()
    bits_down: int = Field(32, ge=1, le=32, description="bits per parameter, server → client")
    bits_up: int = Field(32, ge=1, le=32, description="bits per parameter, client → server")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    uniform: CandidateConfig | None = None
    tiers: dict[str, CandidateConfig] = Field(default_factory=dict)
    catalogue: CatalogueConfig = CatalogueConfig()
    gain: GainConfig = GainConfig()

    @field_validator("policy")
    @classmethod
    def _registered(cls, policy: str) -> str:
        if policy not in policy_names():
            raise PydanticCustomError(
                "policy", "expected one of {names}", {"names": ", ".join(policy_names())}
            )
        return policy

    @model_validator(mode="after")
    def _policy_inputs(self) -> AllocationConfig:
        if self.policy == "uniform" and self.uniform is None:
            raise ValueError(
                "`allocation.uniform` is required when `allocation.policy` is 'uniform' "
                "(e.g. {method = 'lora', options = {r = 8}})"
            )
        if self.policy == "tiered" and not self.tiers:
            raise ValueError(
                "`allocation.tiers` is required when `allocation.policy` is 'tiered' "
                "(a table tier name → {method, options})"
            )
        return self


def make_allocation_config(
    raw: Mapping[str, Any] | None = None, source: str = "config"
) -> AllocationConfig:
    """A validated config; problems raise ``FedpeftError`` naming ``allocation.<field>``."""
    try:
        return AllocationConfig.model_validate(dict(raw or {}))
    except ValidationError as e:
        message = describe_validation_error(e, prefix="allocation", model=AllocationConfig)
        raise FedpeftError(f"{source}: {message}") from None
