"""The ``[profiles]`` section: which simulated device each client has.

Tiers are either declared in absolute units (``scale = "declared"``: the built-in
high/mid/low tiers and any from ``file``) or sized to the model being trained
(``scale = "model"``: each tier's memory, compute and bandwidth follow from the model's cost
at the run's workload, ``fedpeft.allocation.scenario``), so that the same limits bind the
same way for a 22 M-parameter encoder and a 135 M-parameter decoder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from fedpeft.config.base import Section, expand_home


class RelativeTier(Section):
    """A tier described against the model (``scale = "model"``)."""

    depth: float = Field(
        gt=0.0,
        le=1.0,
        description="share of the blocks it can backprop through (at the largest rank)",
    )
    compute: PositiveFloat = Field(
        description="full-depth round at the largest rank on the mean client, / deadline"
    )
    transfer: PositiveFloat = Field(
        description="the largest update down and up at its bandwidth, / deadline"
    )
    down_up: float = Field(5.0, ge=1.0, description="download / upload bandwidth")
    cores: PositiveInt = 1
    availability: float = Field(1.0, ge=0.0, le=1.0)


# The proposal's three device classes (8 GB/4 cores, 4 GB/2 cores, 2 GB/1 core) as shares
# of the model's cost: cores and so compute 4:2:1, upload bandwidth 20:5:1 Mbit/s as the
# declared tiers, availability as declared. Why these depths: BENCHMARKS.md, "Allocation
# on model-relative tiers".
DEFAULT_RELATIVE: dict[str, RelativeTier] = {
    "high": RelativeTier(
        depth=1.0, compute=0.2, transfer=0.015, down_up=5.0, cores=4, availability=0.95
    ),
    "mid": RelativeTier(
        depth=0.5, compute=0.4, transfer=0.06, down_up=4.0, cores=2, availability=0.9
    ),
    "low": RelativeTier(
        depth=0.2, compute=0.8, transfer=0.3, down_up=5.0, cores=1, availability=0.75
    ),
}


class ProfilesConfig(Section):
    """Simulated devices: a tier mix (fractions or one tier name per client) over the
    declared tiers (high/mid/low) and any custom tiers from ``file`` (TOML or JSON), or over
    ``relative`` tiers sized to the model (``scale = "model"``)."""

    mix: dict[str, float] | list[str] = Field(
        default_factory=lambda: {"high": 0.3, "mid": 0.4, "low": 0.3},
        description="tier → share of the clients, or one tier name per client",
    )
    file: str | None = Field(None, description="custom declared tiers (TOML or JSON)")
    scale: Literal["declared", "model"] = Field(
        "declared", description="declared: absolute tiers; model: tiers sized to the model"
    )
    relative: dict[str, RelativeTier] = Field(
        default_factory=lambda: dict(DEFAULT_RELATIVE),
        description="scale = model: tier → {depth, compute, transfer, down_up, cores, "
        "availability} (RelativeTier)",
    )

    _home = field_validator("file", mode="before")(expand_home)
