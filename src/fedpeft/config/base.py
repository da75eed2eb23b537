"""The base of every configuration section: frozen, unknown keys refused, finite numbers."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # strict: `rounds = true` or `devices = 1` is a type error, not a silent 1 or True
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False, strict=True
    )


def expand_home(value: object) -> object:
    """A path key's ``~`` as a shell reads it (the user's home); other values unchanged."""
    return os.path.expanduser(value) if isinstance(value, str) else value
