"""Clustered aggregation: client vectors, seeded clustering, one FedAvg per cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.aggregation import (
    client_vectors_from_data,
    client_vectors_from_updates,
    cluster,
    cluster_updates,
    clustered_fedavg,
    cosine_similarity,
    fedavg,
)
from fedpeft.types import AdapterState


def _two_groups(
    seed: int, per_group: int = 4
) -> tuple[AdapterState, list[AdapterState], list[int]]:
    """Clients whose deltas point along +d or −d (plus small noise): two clear groups."""
    g = torch.Generator().manual_seed(seed)
    ref = {
        "l.lora_A.weight": torch.randn(3, 4, generator=g),
        "head.bias": torch.randn(2, generator=g),
    }
    direction = {k: torch.randn(v.shape, generator=g) for k, v in ref.items()}
    states, truth = [], []
    for c in range(2 * per_group):
        sign = 1.0 if c % 2 == 0 else -1.0
        states.append(
            {
                k: ref[k] + sign * direction[k] + 0.05 * torch.randn(ref[k].shape, generator=g)
                for k in ref
            }
        )
        truth.append(c % 2)
    return ref, states, truth


def _partition(labels) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(np.asarray(labels) == x).tolist()) for x in set(labels)}


def test_vectors_are_flattened_deltas_and_cosine_matches_numpy() -> None:
    ref, states, _ = _two_groups(0)
    v = client_vectors_from_updates(states, ref)
    expected = np.concatenate(
        [(states[1][k] - ref[k]).double().numpy().ravel() for k in sorted(ref)]
    )
    np.testing.assert_allclose(v[1], expected)
    s = cosine_similarity(v)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(s, u @ u.T)
    assert s[0, 2] > 0.9 and s[0, 1] < -0.9


@pytest.mark.parametrize("how", [{"k": 2}, {"threshold": 0.5}])
def test_two_separated_groups_are_found(how) -> None:
    ref, states, truth = _two_groups(1)
    labels = cluster(client_vectors_from_updates(states, ref), seed=0, **how)
    assert _partition(labels) == _partition(truth)
    assert labels[0] == 0  # first appearance gets label 0


@pytest.mark.parametrize("how", [{"k": 3}, {"threshold": 0.3}])
def test_permuting_clients_permutes_the_partition_and_seed_fixes_it(how) -> None:
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(c, 0.2, size=(5, 6)) for c in (-3, 0.5, 4)])
    vectors[:, 0] += np.repeat([5.0, -5.0, 0.0], 5)
    labels = cluster(vectors, seed=3, **how)
    np.testing.assert_array_equal(labels, cluster(vectors, seed=3, **how))
    perm = rng.permutation(len(vectors))
    permuted = cluster(vectors[perm], seed=3, **how)
    assert {frozenset(int(perm[j]) for j in p) for p in _partition(permuted)} == _partition(labels)
    assert len(set(labels)) == 3


def test_clustered_fedavg_is_fedavg_per_group() -> None:
    ref, states, truth = _two_groups(2)
    updates = [(s, float(c + 1)) for c, s in enumerate(states)]
    out = clustered_fedavg(updates, truth)
    assert sorted(out) == [0, 1]
    for label, state in out.items():
        members = [i for i, t in enumerate(truth) if t == label]
        for key in ref:
            expected = np.average(
                [states[i][key].numpy() for i in members],
                axis=0,
                weights=[i + 1.0 for i in members],
            )
            np.testing.assert_allclose(state[key].numpy(), expected, rtol=1e-5)
    whole = clustered_fedavg(updates, [0] * len(updates))
    for key, value in fedavg(updates).items():
        torch.testing.assert_close(whole[0][key], value)


def test_registered_partition_step_and_identical_clients() -> None:
    ref, states, truth = _two_groups(3)
    assert _partition(cluster_updates(states, [ref] * len(states), k=2)) == _partition(truth)
    same = [{k: v.clone() for k, v in states[0].items()} for _ in range(3)]
    out = clustered_fedavg([(s, 1.0) for s in same], cluster_updates(same, [ref] * 3, k=2))
    for state in out.values():
        for key, value in state.items():
            torch.testing.assert_close(value, states[0][key])


def test_data_vectors_and_bad_inputs() -> None:
    v = client_vectors_from_data(np.array([[3.0, 4.0], [0.0, 2.0]]), np.array([[1, 3], [2, 0]]))
    np.testing.assert_allclose(v, [[0.6, 0.8, 0.25, 0.75], [0.0, 1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="exactly one"):
        cluster(v)
    with pytest.raises(ValueError, match="exactly one"):
        cluster(v, k=2, threshold=0.5)
    with pytest.raises(ValueError, match="finite"):
        cluster(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(ValueError, match="labels"):
        clustered_fedavg([({"x": torch.zeros(1)}, 1.0)], [0, 1])


def test_align_labels_keeps_cluster_ids_across_rounds() -> None:
    from fedpeft.aggregation import align_labels

    assert align_labels([1, 1, 0, 0, 0], [0, 0, 1, 1, 0]) == [0, 0, 1, 1, 1]
    split = align_labels([0, 1, 2], [0, 0, 1])  # old cluster 0 split in two: one half is new
    assert split[2] == 1 and sorted(split[:2]) == [0, 2]
    assert align_labels([0, 0], [3, 3]) == [3, 3]
    with pytest.raises(ValueError, match="previous"):
        align_labels([0], [0, 1])


def test_strategy_exposes_the_partition_only_to_a_loop_with_groups() -> None:
    from fedpeft.config import ServerConfig
    from fedpeft.errors import FedpeftError
    from fedpeft.server.strategy import strategy_from_config

    cfg = ServerConfig(aggregator="clustered")
    with pytest.raises(FedpeftError, match="one global adapter per client group"):
        strategy_from_config(cfg)
    strategy = strategy_from_config(cfg, groups=True)
    ref, states, truth = _two_groups(5)
    assert strategy.partition is not None
    labels = strategy.partition(states, [ref] * len(states))
    assert _partition(labels) == _partition(truth)
    updates = [(s, 1.0) for s in states]
    assert sorted(clustered_fedavg(updates, labels)) == [0, 1]
    torch.testing.assert_close(
        strategy.aggregate(updates)["head.bias"], fedavg(updates)["head.bias"]
    )
