"""Resource profiles: validation, files, tier mixes, and the measured device."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedpeft.errors import FedpeftError
from fedpeft.profiling import (
    DEFAULT_TIERS,
    GiB,
    ResourceProfile,
    assign_profiles,
    load_profiles,
    make_profile,
    measure_flops,
    measured_profile,
    parse_profiles,
    tier_counts,
)

VALID = {
    "tier": "phone",
    "memory_bytes": "3 GiB",
    "cores": 2,
    "flops_per_s": 1.5e10,
    "upload_bps": "5 Mbps",
    "download_bps": "20 Mbit/s",
    "availability": 0.8,
}


def test_units_are_parsed() -> None:
    p = make_profile(VALID)
    assert p.memory_bytes == 3 * GiB
    assert p.upload_bps == 5e6 and p.download_bps == 20e6
    assert make_profile(VALID | {"memory_bytes": "512 MB"}).memory_bytes == 512_000_000
    assert make_profile(VALID | {"memory_bytes": 1024}).memory_bytes == 1024
    assert "phone: 3.0 GiB, 2 cores" in p.describe()


def test_default_tiers_follow_the_proposal() -> None:
    assert list(DEFAULT_TIERS) == ["high", "mid", "low"]
    expected = {"high": (8, 4), "mid": (4, 2), "low": (2, 1)}
    for name, (gib, cores) in expected.items():
        tier = DEFAULT_TIERS[name]
        assert (tier.tier, tier.memory_bytes, tier.cores) == (name, gib * GiB, cores)
    flops = [DEFAULT_TIERS[t].flops_per_s for t in expected]
    assert flops == sorted(flops, reverse=True)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("memory_bytes", "3 GG", "unit"),
        ("memory_bytes", -5, "greater than 0"),
        ("cores", 0, "greater than 0"),
        ("flops_per_s", float("inf"), "finite"),
        ("upload_bps", "-1 Mbps", "unit"),
        ("download_bps", 0, "greater than 0"),
        ("availability", 1.5, "less than or equal to 1"),
        ("tier", "bad name!", "pattern"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(FedpeftError, match=rf"`phone\.{field}`.*{expected}.*got"):
        make_profile(VALID | {field: value}, name="phone")


def test_unknown_and_missing_keys() -> None:
    with pytest.raises(FedpeftError, match=r"unknown key `p\.ram`; valid keys: tier"):
        make_profile(VALID | {"ram": 1}, name="p")
    with pytest.raises(FedpeftError, match=r"`p\.memory`; did you mean `p\.memory_bytes`\?$"):
        make_profile(VALID | {"memory": 1}, name="p")
    missing = {k: v for k, v in VALID.items() if k not in ("cores", "upload_bps")}
    with pytest.raises(
        FedpeftError, match=r"missing required keys `p\.cores` and `p\.upload_bps`\.$"
    ):
        make_profile(missing, name="p")


def test_profile_is_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        DEFAULT_TIERS["mid"].cores = 3  # type: ignore[misc]


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_profiles_from_toml_with_a_base_tier(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        '[phone]\nmemory_bytes = "3 GiB"\ncores = 2\nflops_per_s = 1.5e10\n'
        'upload_bps = "5 Mbps"\ndownload_bps = "20 Mbps"\n\n'
        '[slow-mid]\nbase = "mid"\nupload_bps = "256 kbps"\n',
    )
    profiles = load_profiles(path)
    assert profiles["phone"].tier == "phone" and profiles["phone"].availability == 1.0
    slow = profiles["slow-mid"]
    assert slow.tier == "slow-mid" and slow.upload_bps == 256e3
    assert slow.memory_bytes == DEFAULT_TIERS["mid"].memory_bytes


def test_profiles_from_json(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"phone": {k: v for k, v in VALID.items() if k != "tier"}}))
    assert load_profiles(path)["phone"] == make_profile(VALID)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[phone]\nbase = "mid"\ncores = 0\n', r"`phone\.cores`: Input should be greater"),
        ('[phone]\nbase = "huge"\n', r"`phone\.base` is 'huge'"),
        ('[phone]\nbase = "mid"\ntier = "other"\n', r"`phone\.tier` is 'other'"),
        ("phone = 3\n", r"`phone` must be a table"),
        ("", "defines no profiles"),
        ("[phone\n", "is not valid TOML"),
        (
            '[phone]\nbase = "mid"\ncores = 2\ncores = 3\n',
            r"profiles\.toml is not valid TOML: .*`cores` is already set above in the same table",
        ),
    ],
)
def test_bad_profile_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(FedpeftError, match=expected):
        load_profiles(_toml(tmp_path, text))


def test_a_key_set_twice_in_a_json_profiles_file_is_refused(tmp_path: Path) -> None:
    """As TOML refuses it: JSON would silently keep the last `phone`."""
    path = tmp_path / "p.json"
    path.write_text('{"phone": {"base": "low"}, "phone": {"base": "high"}}')
    with pytest.raises(FedpeftError, match=r"p\.json sets `phone` twice in one object"):
        load_profiles(path)
    path.write_text('{"phone": {"base": "low", "cores": 1, "cores": 4}}')
    with pytest.raises(FedpeftError, match="sets `cores` twice"):
        load_profiles(path)


def test_profile_file_must_exist_and_be_toml_or_json(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match="does not exist"):
        load_profiles(tmp_path / "none.toml")
    with pytest.raises(FedpeftError, match="is a folder, not a file"):
        load_profiles(tmp_path)
    other = tmp_path / "p.yaml"
    other.write_text("x: 1")
    with pytest.raises(FedpeftError, match=r"\.toml or \.json"):
        load_profiles(other)


def test_tier_counts_are_exact_largest_remainder() -> None:
    mix = {"high": 0.3, "mid": 0.4, "low": 0.3}
    assert tier_counts(10, mix) == {"high": 3, "mid": 4, "low": 3}
    assert tier_counts(7, mix) == {"high": 2, "mid": 3, "low": 2}  # quotas 2.1, 2.8, 2.1
    assert tier_counts(1, mix) == {"high": 0, "mid": 1, "low": 0}
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 500))
        fractions = rng.dirichlet(np.ones(int(rng.integers(1, 6))))
        mix_r = {f"t{i}": float(f) for i, f in enumerate(fractions)}
        counts = tier_counts(n, mix_r)
        assert sum(counts.values()) == n
        assert all(abs(counts[t] - f * n) < 1 for t, f in mix_r.items())


@pytest.mark.parametrize(
    ("mix", "expected"),
    [
        ({"high": 0.5, "low": 0.4}, "must sum to 1, got 0.9"),
        ({"high": 1.2, "low": -0.2}, r"`low` must be a fraction"),
        ({}, "empty"),
        ({"high": 0.5, "tiny": 0.5}, "tier 'tiny' is not defined"),
    ],
)
def test_bad_mixes(mix: dict[str, float], expected: str) -> None:
    with pytest.raises(FedpeftError, match=expected):
        assign_profiles(10, mix, seed=0)


def test_assignment_is_exact_and_seeded() -> None:
    mix = {"high": 0.3, "mid": 0.4, "low": 0.3}
    a = assign_profiles(20, mix, seed=1)
    assert Counter(p.tier for p in a) == {"high": 6, "mid": 8, "low": 6}
    assert a == assign_profiles(20, mix, seed=1)
    orders = {tuple(p.tier for p in assign_profiles(20, mix, seed=s)) for s in range(5)}
    assert len(orders) > 1  # the seed shuffles which client gets which tier


def test_explicit_list_and_custom_tiers() -> None:
    phone = make_profile(VALID)
    out = assign_profiles(3, ["low", "phone", DEFAULT_TIERS["high"]], 0, {"phone": phone})
    assert [p.tier for p in out] == ["low", "phone", "high"]
    with pytest.raises(FedpeftError, match="has 2 entries but there are 3 clients"):
        assign_profiles(3, ["low", "mid"], 0)
    with pytest.raises(FedpeftError, match="`num_clients` must be at least 1"):
        assign_profiles(0, {"mid": 1.0}, 0)


def test_measured_profile_is_positive() -> None:
    profile = measured_profile(upload_bps=1e6, download_bps="10 Mbps", seconds=0.05)
    assert isinstance(profile, ResourceProfile) and profile.tier == "measured"
    assert profile.memory_bytes > 0 and profile.cores >= 1 and profile.flops_per_s > 1e6
    assert profile.download_bps == 10e6
    assert measure_flops(seconds=0.02, size=64) > 0
    with pytest.raises(FedpeftError, match="`seconds` must be positive"):
        measure_flops(seconds=0)
    with pytest.raises(FedpeftError, match=r"`measured\.upload_bps`"):
        measured_profile(upload_bps=-1, download_bps=1e6, seconds=0.01)
    assert parse_profiles({"m": profile.to_json() | {"tier": "m"}})["m"].cores == profile.cores
