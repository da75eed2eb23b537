import json
import math

import numpy as np
import pytest

from fedpeft.config import load_config
from fedpeft.data import data_profile, partition_indices
from fedpeft.errors import FedpeftError


def _labels(n: int = 2000, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n)


def _parts(kind: str, seed: int = 0, **kw: object) -> list[np.ndarray]:
    sets = [f"data.partition={kind!r}", *(f"data.{k}={v}" for k, v in kw.items())]
    return partition_indices(_labels(), load_config(overrides=sets).data, seed)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_data(kind: str) -> None:
    parts = _parts(kind, num_clients=10)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))
    if kind != "pathological":  # a class may be given to no client there
        assert sorted(joined.tolist()) == list(range(2000))
    if kind == "iid":
        assert {len(p) for p in parts} == {200}


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_same_seed_same_partition_other_seed_other(kind: str) -> None:
    a, b, c = _parts(kind, 7), _parts(kind, 7), _parts(kind, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_entropy(parts: list[np.ndarray]) -> float:
    labels = _labels()
    return float(
        np.mean([data_profile(labels[p], np.ones(len(p)), 4).label_entropy for p in parts])
    )


def test_one_class_entropy_is_plain_zero() -> None:
    """A client holding one class has entropy 0.0, not -0.0 (partitions.json showed `-0.0`)."""
    profile = data_profile(np.array([1, 1, 1]), np.ones(3), 2)
    assert profile.label_entropy == 0.0 and math.copysign(1.0, profile.label_entropy) == 1.0
    assert '"label_entropy": 0.0' in json.dumps(profile.to_json())


def test_label_skew_is_really_skewed() -> None:
    iid = _mean_entropy(_parts("iid"))
    mild = _mean_entropy(_parts("dirichlet", alpha=1.0))
    strong = _mean_entropy(_parts("dirichlet", alpha=0.1))
    assert iid > 1.95  # 4 balanced classes: 2 bits
    assert iid > mild > strong
    assert strong < 1.2


def test_pathological_gives_each_client_k_classes() -> None:
    labels = _labels()
    for k in (1, 2):
        parts = _parts("pathological", classes_per_client=k)
        assert all(len(np.unique(labels[p])) == k for p in parts)


def test_too_little_data_is_a_user_error() -> None:
    cfg = load_config(overrides=["data.num_clients=100", "data.min_partition_size=50"]).data
    with pytest.raises(FedpeftError, match="num_clients.*raise `data.train_size`"):
        partition_indices(_labels(), cfg, 0)  # 2,000 examples: train_size is the limit
    cfg = load_config(overrides=["data.num_clients=50"]).data
    with pytest.raises(FedpeftError, match="lower one \\(that is all the training data\\)"):
        partition_indices(_labels(n=20), cfg, 0)  # a 20-row file: raising train_size won't help


def test_a_dirichlet_split_flower_gives_up_on_is_drawn_again_from_a_derived_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two classes, α = 0.1, 600 examples over 10 clients: for seed 1 Flower's sampler
    gives up (10 draws leave a client under 2 examples); a derived seed's draw is used,
    the same on every call, and the first seed's result is unchanged where it succeeds."""
    import fedpeft.data.partition as partition

    labels = np.array([0] * 272 + [1] * 328)
    cfg = load_config(overrides=["data.alpha=0.1"]).data
    monkeypatch.setattr(partition, "DIRICHLET_RESEEDS", 1)
    with pytest.raises(FedpeftError, match="tried 1 seeds"):
        partition_indices(labels, cfg, 1)
    first_try = partition_indices(labels, cfg, 0)
    monkeypatch.setattr(partition, "DIRICHLET_RESEEDS", 8)
    parts = partition_indices(labels, cfg, 1)
    assert [p.tolist() for p in parts] == [p.tolist() for p in partition_indices(labels, cfg, 1)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(600))
    assert min(len(p) for p in parts) >= 2
    assert [p.tolist() for p in first_try] == [
        p.tolist() for p in partition_indices(labels, cfg, 0)
    ]


def test_flowers_redraw_warnings_become_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """50 examples of 10 classes over 10 clients at α = 0.5: Flower redraws the Dirichlet
    sample several times and warns at each; the user sees one line saying how many."""
    import warnings

    labels = np.arange(50) % 10
    cfg = load_config(overrides=["data.alpha=0.5"]).data
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        parts = partition_indices(labels, cfg, 0)
    assert min(len(p) for p in parts) >= 2
    assert not [w for w in caught if "min_partition_size" in str(w.message)]
    said = [r.getMessage() for r in caplog.records if "redrawn" in r.getMessage()]
    assert len(said) == 1 and "Dirichlet(0.5) split redrawn" in said[0], said


def test_a_pathological_split_that_cannot_be_drawn_names_the_keys_that_help() -> None:
    """A class of 1 example that several clients must share: the refusal advises this
    project's keys, not `data.alpha` (no part of a pathological split) nor Flower's own
    options."""
    labels = np.array([0, 0, 0, 0, 0, 1])
    cfg = load_config(overrides=["data.partition='pathological'", "data.num_clients=3"]).data
    with pytest.raises(FedpeftError) as refused:
        partition_indices(labels, cfg, 0)
    message = str(refused.value)
    assert "another `data.classes_per_client`" in message, message
    assert "alpha" not in message and "class_assignment_mode" not in message, message
