"""The ``[allocation]`` section: policy, utility weights, deadline, catalogue and gain prior.

The schema checks types, ranges and finiteness. Names that come from registries (the
policy, each candidate's method and its options) are checked by
``fedpeft.allocation.make_allocation_config``, as ``[peft]``'s options are by the PEFT
registry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedpeft.config.base import Section

Placement = Literal["all", "top"]


class CostWeights(Section):
    """Weights of the three parts of ``C`` (normalised to sum to 1 when used)."""

    time: float = Field(1.0, ge=0.0)
    memory: float = Field(1.0, ge=0.0)
    bytes: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> CostWeights:
        if self.time + self.memory + self.bytes <= 0:
            raise ValueError("`allocation.cost_weights` must have at least one positive weight")
        return self


class CandidateConfig(Section):
    """A candidate as written in a config: ``{method = "lora", options = {r = 8}}``."""

    name: str | None = Field(None, min_length=1, max_length=64)
    method: str
    options: dict[str, Any] = Field(default_factory=dict)


class CatalogueConfig(Section):
    """Which candidates to generate. ``top`` places an adapter in the upper half of the
    blocks only (cheaper backprop); ``all`` in every block."""

    lora_ranks: list[PositiveInt] = [2, 4, 8, 16]
    lora_placements: list[Placement] = ["all", "top"]
    adapter_methods: list[Literal["houlsby", "pfeiffer"]] = ["houlsby", "pfeiffer"]
    adapter_sizes: list[PositiveInt] = [8, 32, 64]
    adapter_placements: list[Placement] = ["all"]
    prompt_tokens: list[PositiveInt] = [10, 20]
    prefix_tokens: list[PositiveInt] = []
    others: list[str] = Field(["ia3", "bitfit", "head"], description="methods, default options")
    extra: list[CandidateConfig] = []


class GainConfig(Section):
    """The prior of ``R`` and how observations update it (``fedpeft.allocation.gain``)."""

    prior: dict[str, float] = Field(
        default_factory=dict, description="method → μ₀, overriding the method's own prior"
    )
    default_prior: float = Field(
        0.6, ge=0.0, le=1.0, description="methods whose spec states no prior"
    )
    prior_count: PositiveFloat = Field(2.0, description="n₀: pseudo-observations of the prior")
    gain_scale: PositiveFloat = Field(0.02, description="g_s: a gain this large maps to 1")
    half_examples: PositiveInt = Field(64, description="n at which the size factor is ½")

    @field_validator("prior")
    @classmethod
    def _in_unit(cls, prior: dict[str, float]) -> dict[str, float]:
        if not all(0.0 <= mu <= 1.0 for mu in prior.values()):
            raise PydanticCustomError("prior", "every prior mean must be in [0, 1]")
        return prior


class AllocationConfig(Section):
    """``U(c,p) = α·R − β·C + γ·E`` under ``memory ≤ client memory`` and
    ``round time ≤ deadline_s``; ``uniform`` and ``tiers`` serve the fixed policies."""

    enabled: bool = Field(
        False, description="fedpeft run trains each client with its allocated configuration"
    )
    policy: str = Field("utility", description="a registered policy: utility, uniform, tiered")
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
