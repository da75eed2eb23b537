"""A client's resources, the declared simulation tiers, and profiles read from a file.

Units: memory in bytes, compute in sustained float32 FLOP/s (what a dense matmul reaches;
the allocation cost model scales it to training throughput), bandwidth in **bits** per
second (the network convention), availability as the probability of being online for a
round. In files, memory and bandwidth may carry a unit: ``"8 GiB"``, ``"20 Mbps"``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from fedpeft.config.loading import describe_validation_error
from fedpeft.config.messages import describe_toml_error
from fedpeft.config.paths import check_input_file
from fedpeft.errors import FedpeftError

KiB, MiB, GiB = 1024, 1024**2, 1024**3
MEMORY_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
MEMORY_UNITS |= {"kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4}
BANDWIDTH_UNITS = {"bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}
BANDWIDTH_UNITS |= {"bit/s": 1, "kbit/s": 1e3, "mbit/s": 1e6, "gbit/s": 1e9}
_QUANTITY = re.compile(r"^\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")


def parse_quantity(value: Any, units: Mapping[str, float]) -> Any:
    """``"8 GiB"`` → 8·2³⁰; numbers pass through (the field's own type then checks them)."""
    if not isinstance(value, str):
        return value
    match = _QUANTITY.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in units):
        raise PydanticCustomError(
            "quantity",
            "expected a number or a number with a unit ({units})",
            {"units": ", ".join(units)},
        )
    number = float(match.group(1)) * units.get(unit, 1)
    if not math.isfinite(number):
        raise PydanticCustomError("quantity", "expected a finite quantity", {})
    return number


def _memory(value: Any) -> Any:
    parsed = parse_quantity(value, MEMORY_UNITS)
    return round(parsed) if isinstance(value, str) else parsed


Memory = Annotated[PositiveInt, BeforeValidator(_memory)]
Bandwidth = Annotated[PositiveFloat, BeforeValidator(lambda v: parse_quantity(v, BANDWIDTH_UNITS))]


class ResourceProfile(BaseModel):
    """What one client can spend on a round (declared in simulation, measured on a device)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    memory_bytes: Memory
    cores: PositiveInt
    flops_per_s: PositiveFloat = Field(allow_inf_nan=False)
    upload_bps: Bandwidth = Field(allow_inf_nan=False)
    download_bps: Bandwidth = Field(allow_inf_nan=False)
    availability: float = Field(1.0, ge=0.0, le=1.0)

    def to_json(self) -> dict[str, object]:
        return self.model_dump()

    def describe(self) -> str:
        """One line for people: ``mid: 4.0 GiB, 2 cores, 20 GFLOP/s, ↓20/↑5 Mbit/s, 90%``."""
        return (
            f"{self.tier}: {self.memory_bytes / GiB:.1f} GiB, {self.cores} cores, "
            f"{self.flops_per_s / 1e9:.3g} GFLOP/s, ↓{self.download_bps / 1e6:.3g}/"
            f"↑{self.upload_bps / 1e6:.3g} Mbit/s, {self.availability:.0%} available"
        )


# Declared tiers (the proposal's memory and cores). FLOP/s and bandwidth are ASSUMPTIONS,
# order-of-magnitude figures for the device class, to be replaced by measured profiles:
# - FLOP/s: sustained float32 matmul throughput of ~25 GFLOP/s per laptop core (AVX2 FMA at
#   ~3 GHz peaks near 96; small-matrix PyTorch reaches a quarter), ~10 per phone-class core
#   (NEON, ~2.5 GHz) and ~5 for one Raspberry-Pi-class core (Cortex-A72 peaks at 12).
# - bandwidth: home broadband/Wi-Fi (100↓/20↑ Mbit/s), a typical 4G link (20↓/5↑) and a
#   congested 3G/IoT uplink (5↓/1↑).
# - availability: the chance the device is online and idle when a round starts.
DEFAULT_TIERS: dict[str, ResourceProfile] = {
    "high": ResourceProfile(
        tier="high",
        memory_bytes=8 * GiB,
        cores=4,
        flops_per_s=100e9,
        upload_bps=20e6,
        download_bps=100e6,
        availability=0.95,
    ),
    "mid": ResourceProfile(
        tier="mid",
        memory_bytes=4 * GiB,
        cores=2,
        flops_per_s=20e9,
        upload_bps=5e6,
        download_bps=20e6,
        availability=0.9,
    ),
    "low": ResourceProfile(
        tier="low",
        memory_bytes=2 * GiB,
        cores=1,
        flops_per_s=5e9,
        upload_bps=1e6,
        download_bps=5e6,
        availability=0.75,
    ),
}


def make_profile(
    raw: Mapping[str, Any], name: str = "profile", source: str = "profile"
) -> ResourceProfile:
    """A validated profile; a bad value raises ``FedpeftError`` naming ``<name>.<field>``."""
    unknown = sorted(set(raw) - set(ResourceProfile.model_fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(ResourceProfile.model_fields), n=1)
        if close:
            raise FedpeftError(
                f"{source}: unknown key `{name}.{unknown[0]}`; did you mean `{name}.{close[0]}`?"
            )
        raise FedpeftError(
            f"{source}: unknown key `{name}.{unknown[0]}`; valid keys: "
            f"{', '.join(ResourceProfile.model_fields)} (and `base` in a profiles file)."
        )
    try:
        return ResourceProfile.model_validate(dict(raw))
    except ValidationError as e:
        raise FedpeftError(f"{source}: {describe_validation_error(e, prefix=name)}") from None


def parse_profiles(raw: Mapping[str, Any], source: str = "profiles") -> dict[str, ResourceProfile]:
    """Named profiles from a table ``{name: {field: value}}``; the name is the tier.

    An entry may start from a declared tier with ``base = "mid"`` and override fields.
    """
    out: dict[str, ResourceProfile] = {}
    for name, fields in raw.items():
        if not isinstance(fields, Mapping):
            raise FedpeftError(f"{source}: `{name}` must be a table of profile fields.")
        fields = dict(fields)
        base = fields.pop("base", None)
        if base is not None and base not in DEFAULT_TIERS:
            raise FedpeftError(
                f"{source}: `{name}.base` is {base!r}; expected one of {sorted(DEFAULT_TIERS)}."
            )
        start = DEFAULT_TIERS[base].model_dump() if base else {}
        if fields.setdefault("tier", name) != name:
            raise FedpeftError(
                f"{source}: `{name}.tier` is {fields['tier']!r}; leave it out or set it to "
                f"the table's name {name!r}."
            )
        out[name] = make_profile(start | fields, name=name, source=source)
    if not out:
        raise FedpeftError(f"{source} defines no profiles; add at least one table.")
    return out


def load_profiles(path: str | Path) -> dict[str, ResourceProfile]:
    """Profiles from a TOML or JSON file of named tables (see ``parse_profiles``)."""
    path = Path(path)
    check_input_file(path, "profiles file", "pass a TOML or JSON file")
    if path.suffix not in (".json", ".toml"):
        raise FedpeftError(f"profiles file {path} must end in .toml or .json.")
    text = ""
    try:
        text = path.read_text(encoding="utf-8")
        raw = _unique_json(text, path) if path.suffix == ".json" else tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = describe_toml_error(e, text)
        raise FedpeftError(f"profiles file {path} is not valid TOML: {message}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FedpeftError(f"profiles file {path} could not be parsed: {e}.") from None
    if not isinstance(raw, dict):
        raise FedpeftError(f"profiles file {path} must hold a table of named profiles.")
    return parse_profiles(raw, source=f"profiles file {path}")


def _unique_json(text: str, path: Path) -> Any:
    """``json.loads``, refusing a key set twice in one object (as TOML does) rather than
    silently keeping the last of them."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise FedpeftError(
                    f"profiles file {path} sets `{key}` twice in one object; keep one of them."
                )
            seen[key] = value
        return seen

    return json.loads(text, object_pairs_hook=pairs)
