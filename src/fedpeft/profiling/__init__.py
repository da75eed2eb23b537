"""Client resource profiles: declared tiers for simulation, files, and measured devices.

Importing this package is cheap: ``torch`` and ``psutil`` load only when measuring.
"""

from fedpeft.profiling.measure import free_memory, measure_flops, measured_profile, usable_cores
from fedpeft.profiling.mix import (
    TierMix,
    assign_profiles,
    declared_devices,
    tier_counts,
    tier_names,
)
from fedpeft.profiling.profile import (
    DEFAULT_TIERS,
    GiB,
    MiB,
    ResourceProfile,
    load_profiles,
    make_profile,
    parse_profiles,
)

__all__ = [
    "DEFAULT_TIERS",
    "GiB",
    "MiB",
    "ResourceProfile",
    "TierMix",
    "assign_profiles",
    "declared_devices",
    "free_memory",
    "load_profiles",
    "make_profile",
    "measure_flops",
    "measured_profile",
    "parse_profiles",
    "tier_counts",
    "tier_names",
    "usable_cores",
]
