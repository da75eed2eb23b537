"""The base of every configuration section: frozen, unknown keys refused, finite numbers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # strict: `rounds = true` or `devices = 1` is a type error, not a silent 1 or True
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False, strict=True
    )
