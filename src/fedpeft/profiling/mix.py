"""Which simulated client gets which device: a tier mix, exact and seeded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedpeft.errors import FedpeftError
from fedpeft.profiling.profile import DEFAULT_TIERS, ResourceProfile, load_profiles

TierMix = Mapping[str, float] | Sequence[str | ResourceProfile]


def tier_counts(num_clients: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Clients per tier by the largest-remainder (Hamilton) method.

    ``n_t = ⌊f_t·N⌋``, then the ``N − Σ n_t`` leftover clients go one each to the tiers with
    the largest remainders ``f_t·N − n_t`` (ties: larger fraction, then name). The counts sum
    to ``N`` exactly and differ from ``f_t·N`` by less than one.
    """
    _check_fractions(fractions)
    quotas = {t: f * num_clients for t, f in fractions.items()}
    counts = {t: math.floor(q) for t, q in quotas.items()}
    left = num_clients - sum(counts.values())
    order = sorted(quotas, key=lambda t: (-(quotas[t] - counts[t]), -fractions[t], t))
    for t in order[:left]:
        counts[t] += 1
    return counts


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions:
        raise FedpeftError("the tier mix is empty; give fractions such as {high = 0.3, ...}.")
    for tier, f in fractions.items():
        if not (isinstance(f, int | float) and math.isfinite(f) and f >= 0):
            raise FedpeftError(f"tier mix `{tier}` must be a fraction in [0, 1], got {f!r}.")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        shown = ", ".join(f"{t}={f:g}" for t, f in fractions.items())
        raise FedpeftError(f"tier mix fractions must sum to 1, got {total:g} ({shown}).")


def assign_profiles(
    num_clients: int,
    mix: TierMix,
    seed: int,
    tiers: Mapping[str, ResourceProfile] | None = None,
) -> list[ResourceProfile]:
    """One profile per client.

    ``mix`` is either fractions per tier (``{"high": 0.3, "mid": 0.4, "low": 0.3}``: exact
    counts by ``tier_counts``, then shuffled with ``np.random.default_rng(seed)``) or an
    explicit per-client list of tier names or profiles (used as given, ``seed`` unused).
    ``tiers`` adds to or overrides ``DEFAULT_TIERS`` by name.
    """
    known = {**DEFAULT_TIERS, **(tiers or {})}
    return [_lookup(e, known) for e in mix_entries(num_clients, mix, seed)]


def mix_entries(num_clients: int, mix: TierMix, seed: int) -> list[str | ResourceProfile]:
    """Each client's tier name (or profile, from an explicit list), before lookup."""
    if num_clients < 1:
        raise FedpeftError(f"`num_clients` must be at least 1, got {num_clients}.")
    if isinstance(mix, Mapping):
        counts = tier_counts(num_clients, mix)
        names = [t for t, c in counts.items() for _ in range(c)]
        order = np.random.default_rng(seed).permutation(num_clients)
        return [names[i] for i in order]
    if len(mix) != num_clients:
        raise FedpeftError(
            f"the per-client tier list has {len(mix)} entries but there are "
            f"{num_clients} clients; give one tier per client."
        )
    return list(mix)


def tier_names(num_clients: int, mix: TierMix, seed: int) -> list[str]:
    """Each client's tier name, as ``assign_profiles`` assigns them."""
    return [
        e.tier if isinstance(e, ResourceProfile) else e for e in mix_entries(num_clients, mix, seed)
    ]


def _lookup(entry: str | ResourceProfile, known: Mapping[str, ResourceProfile]) -> ResourceProfile:
    if isinstance(entry, ResourceProfile):
        return entry
    if entry not in known:
        raise FedpeftError(
            f"tier {entry!r} is not defined; expected one of {sorted(known)} or a profiles "
            "file that defines it."
        )
    return known[entry]


def declared_devices(
    num_clients: int, mix: TierMix, seed: int, file: str | None = None
) -> list[ResourceProfile]:
    """Every client's declared device: ``mix`` over the default tiers and ``file``'s."""
    tiers = load_profiles(file) if file else None
    return assign_profiles(num_clients, mix, seed, tiers)
