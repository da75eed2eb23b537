"""The ``[allocation]`` section: policy, utility weights, deadline, catalogue and gain prior.

The schema checks types, ranges and finiteness. Names that come from registries (the
policy, each candidate's method and its options) are checked by
``fedpeft.allocation.make_allocation_config``, as ``[peft]``'s options are by the PEFT
registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedpeft.config.base import Section

Placement = Literal["all", "top"]
TargetSet = Literal["qv", "qkv", "qkv_ffn"]
Depth = Annotated[float, Field(gt=0.0, le=1.0)]


class CostWeights(Section):
    """Weights of the four parts of ``C`` (normalised to sum to 1 when used): the time a
    client adds to the round, its memory, its transfer time at its own bandwidth, and the
    risk of missing the deadline (``fedpeft.allocation.utility``)."""

    time: float = Field(1.0, ge=0.0, description="the time a client adds to the round")
    memory: float = Field(1.0, ge=0.0, description="its peak memory, / the device's")
    bytes: float = Field(1.0, ge=0.0, description="its transfer time at its own bandwidth")
    risk: float = Field(1.0, ge=0.0, description="its chance of missing the deadline")

    @model_validator(mode="after")
    def _some_weight(self) -> CostWeights:
        if self.time + self.memory + self.bytes + self.risk <= 0:
            raise ValueError("`allocation.cost_weights` must have at least one positive weight")
        return self


class CandidateConfig(Section):
    """A candidate as written in a config: ``{method = "lora", options = {r = 8}}``."""

    name: str | None = Field(None, min_length=1, max_length=64)
    method: str
    options: dict[str, Any] = Field(default_factory=dict)


class CatalogueConfig(Section):
    """Which candidates to generate. By default only LoRA, so that every client's update
    lands in one envelope (one global model): rank × depth (the top ``round(d·L)`` blocks; fewer
    blocks shorten backprop and store fewer activations) × targets (``qv``: query and value,
    ``qkv``: and key, ``qkv_ffn``: and the feed-forward output). Other methods (adapters,
    prompts, IA3, …) join only when listed here; their clients form groups of their own,
    which ``server.aggregator = "kd_fusion"`` bridges by distillation. ``top`` places an
    adapter in the upper half of the blocks only; ``all`` in every block."""

    lora_ranks: list[PositiveInt] = Field([4, 8, 16], description="LoRA ranks to choose from")
    lora_depths: list[Depth] = Field(
        [1.0, 0.5, 0.33, 0.17], description="fractions of the blocks, counted from the top"
    )
    lora_targets: list[TargetSet] = Field(
        ["qv"], description="qv: query and value; qkv: and key; qkv_ffn: and the FFN output"
    )
    adapter_methods: list[Literal["houlsby", "pfeiffer"]] = Field(
        [], description="bottleneck adapters to offer too (none by default)"
    )
    adapter_sizes: list[PositiveInt] = Field([8, 32, 64], description="their bottleneck sizes")
    adapter_placements: list[Placement] = Field(
        ["all"], description="all: every block; top: the upper half"
    )
    prompt_tokens: list[PositiveInt] = Field([], description="prompt tuning's token counts")
    prefix_tokens: list[PositiveInt] = Field([], description="prefix tuning's token counts")
    others: list[str] = Field([], description="methods with their default options")
    extra: list[CandidateConfig] = Field(
        [], description='written out: [{method = "ia3"}, {method = "lora", options = {r = 2}}]'
    )


class GainConfig(Section):
    """The prior of ``R`` and how observations update it (``fedpeft.allocation.gain``)."""

    prior: dict[str, float] = Field(
        default_factory=dict, description="method → μ₀, overriding the method's own prior"
    )
    default_prior: float = Field(
        0.6, ge=0.0, le=1.0, description="methods whose spec states no prior"
    )
    prior_count: PositiveFloat = Field(
        8.0, description="n₀: weight of the prior, in rounds of full credit"
    )
    gain_scale: PositiveFloat = Field(0.02, description="g_s: a gain this large maps to 1")
    gain_decay: float = Field(
        0.3, gt=0.0, le=1.0, description="λ: rate of the running mean ḡ that gains are centred on"
    )
    depth_exponent: float = Field(
        0.05, ge=0.0, description="a: capacity κ = coverage^a · rank factor^b (measured)"
    )
    rank_exponent: float = Field(
        1.0,
        ge=0.0,
        description="b: capacity κ = coverage^a · ρ^b, ρ = log₂(1+r)/log₂(1+r_max) (federated "
        "runs: rank counted where the bytes were cheap; BENCHMARKS issue 13)",
    )
    work_exponent: float = Field(
        0.5, ge=0.0, description="w: a client doing a share s of its steps gains s^w"
    )
    half_examples: PositiveInt = Field(64, description="n at which the size factor is ½")

    @field_validator("prior")
    @classmethod
    def _in_unit(cls, prior: dict[str, float]) -> dict[str, float]:
        if not all(0.0 <= mu <= 1.0 for mu in prior.values()):
            raise PydanticCustomError("prior", "every prior mean must be in [0, 1]")
        return prior


class BaselineConfig(Section):
    """Options of the published baselines (``fedpeft.allocation.baselines``)."""

    fedra_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="FedRA: share of a device's reachable blocks drawn"
    )
    fedra_redraw: bool = Field(
        True,
        description="FedRA: draw each client's blocks anew every round (False: its first "
        "draw is kept for the run — measures the redraw apart from the subset's size: on "
        "SST-2 IID the redraw is worth +1.9 points, on AG News IID nothing; BENCHMARKS issue 13)",
    )
    fixed_rank: PositiveInt | None = Field(
        None, description="FedRA's rank (None: the catalogue's middle rank)"
    )
    prune_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="HetLoRA: γ, the rank kept when a client prunes"
    )
    prune_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="HetLoRA: prune when the tail's energy share is below this × its rank share",
    )


class AllocationConfig(Section):
    """``U(c,p) = α·R − β·C + γ·E`` under ``memory ≤ client memory`` and
    ``round time ≤ deadline_s``; ``uniform`` and ``tiers`` serve the fixed policies."""

    enabled: bool = Field(
        False, description="fedpeft run trains each client with its allocated configuration"
    )
    policy: str = Field("utility", description="a registered policy (fedpeft allocate --help)")
    alpha: float = Field(1.0, ge=0.0, description="α: weight of the expected gain R")
    beta: float = Field(1.0, ge=0.0, description="β: weight of the normalised cost C")
    gamma: float = Field(0.5, ge=0.0, description="γ: weight of the expressivity E")
    deadline_s: PositiveFloat = Field(120.0, description="round deadline, seconds")
    time_error: PositiveFloat = Field(
        0.1, description="σ: relative error of predicted round times (deadline risk)"
    )
    round_aware: bool = Field(
        True, description="time up to the round's slowest necessary client costs nothing"
    )
    adapt_steps: bool = Field(
        True, description="a client that would miss the deadline trains fewer local steps"
    )
    min_work: float = Field(
        0.25, gt=0.0, le=1.0, description="the fewest local steps, as a share of the full"
    )
    normalise_work: bool = Field(
        True, description="FedNova: average updates per local step (unequal work)"
    )
    shared_depth: bool = Field(
        False,
        description="utility: every client of a round trains LoRA on the same top blocks, the "
        "deepest catalogue depth at which each of them has a feasible candidate (else the "
        "depth most of them can hold), and picks only its rank and steps; a block held by "
        "the deep clients alone is averaged over their data alone, which under label skew "
        "moves it with their classes",
    )
    depth_gate_tv: float | None = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="utility (the other policies ignore it): LoRA below the top block only "
        "while the round's clients that "
        "train that deep hold, pooled, labels within this total-variation distance of the "
        "whole round's; the first depth past it caps every client at the depth above "
        "(0 or None: no cap; BENCHMARKS issue 13)",
    )
    client_gate_tv: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="utility: a client whose own labels are farther than this total-variation "
        "distance from the whole round's trains LoRA on the catalogue's shallowest depth only "
        "(after ``depth_gate_tv``, which looks at the deep trainers pooled); None or 0: off. "
        "Measured level or behind the default (−0.3 to −1.1 points, fewer bytes: BENCHMARKS "
        "issue 13, per-client depth gate)",
    )
    shared_rank: bool = Field(
        False,
        description="utility: after allocating, each LoRA client's rank is raised to the "
        "round's largest allocated rank at its own blocks and targets where that still fits "
        "(memory, deadline, no fewer local steps); measured no better than without "
        "(BENCHMARKS issue 13)",
    )
    rank_tail: Literal["zero", "keep"] = Field(
        "zero",
        description="the LoRA rank components past a client's rank, in its lifted reply: "
        "'zero' pads with zeros (HetLoRA), which pulls them towards zero by the low-rank "
        "clients' share; 'keep' pads with the global's own, so the client counts as no "
        "change there (measured neutral on accuracy, BENCHMARKS issue 13)",
    )
    partial_keys: Literal["auto", "holders", "all"] = Field(
        "holders",
        description="a LoRA tensor only some clients train (deeper blocks, more targets): "
        "'holders' averages it over them; 'all' moves it by their share of the group's "
        "weight (the others count as no change); 'auto' (the default until 2026-12-05, kept "
        "so that runs written with it resume alike): 'all' for the utility policy, 'holders' "
        "for the others. 'holders' is the default since the depth gate keeps the deep "
        "trainers' labels near the round's: with the gate on it was level or ahead of 'all' "
        "in every setting measured, +1.8 points on SST-2 IID (BENCHMARKS issue 13)",
    )
    cost_weights: CostWeights = CostWeights()
    bits_down: int = Field(32, ge=1, le=32, description="bits per parameter, server → client")
    bits_up: int = Field(32, ge=1, le=32, description="bits per parameter, client → server")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="the client optimiser the memory estimate assumes"
    )
    uniform: CandidateConfig | None = Field(
        None, description='uniform policy: every client\'s {method = "lora", options = {r = 8}}'
    )
    tiers: dict[str, CandidateConfig] = Field(
        default_factory=dict, description="tiered policy: device tier → {method, options}"
    )
    catalogue: CatalogueConfig = CatalogueConfig()
    gain: GainConfig = GainConfig()
    baselines: BaselineConfig = BaselineConfig()

    @model_validator(mode="after")
    def _policy_inputs(self) -> AllocationConfig:
        if self.policy == "uniform" and self.uniform is None:
            raise ValueError(
                "`allocation.uniform` is required when `allocation.policy` is 'uniform' "
                "(e.g. {method = 'lora', options = {r = 8}})"
            )
        if self.shared_depth and self.policy != "utility":
            raise ValueError(
                "`allocation.shared_depth` applies to the 'utility' policy only; the fixed "
                f"and baseline policies choose depths their own way (got {self.policy!r})"
            )
        if self.policy == "tiered" and not self.tiers:
            raise ValueError(
                "`allocation.tiers` is required when `allocation.policy` is 'tiered' "
                "(a table tier name → {method, options})"
            )
        return self

    @property
    def dilutes(self) -> bool:
        """Whether partially held keys move by their holders' share (``partial_keys``)."""
        if self.partial_keys == "auto":
            return self.policy == "utility"
        return self.partial_keys == "all"
