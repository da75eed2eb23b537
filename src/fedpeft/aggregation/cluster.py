"""Clustered aggregation: clients that pull in similar directions share a global module.

Each client is a vector — its update direction ``θ_c − θ_ref`` flattened
(``client_vectors_from_updates``, as in Clustered FL; Sattler et al., 2021, IEEE TNNLS), or a
data profile under the frozen model: its mean embedding and label histogram
(``client_vectors_from_data``). Vectors are L2-normalised, so distances are cosine
distances: ``cos(u, v) = u·v / (‖u‖‖v‖)``. ``cluster`` groups them with seeded k-means (k given)
or average-linkage agglomerative clustering cut at a cosine distance (threshold given), and
``clustered_fedavg`` averages each group on its own: one global per cluster. Labels are
renumbered in order of first appearance, so the same partition always gets the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedpeft.aggregation.compat import check_states
from fedpeft.aggregation.fedavg import fedavg
from fedpeft.types import AdapterState


def client_vectors_from_updates(
    updates: Sequence[AdapterState], reference: AdapterState | Sequence[AdapterState]
) -> np.ndarray:
    """``(C, D)``: row c is ``θ_c − θ_ref`` flattened over sorted keys, in float64.

    ``reference`` is one global (every client started from it) or one start state per client.
    """
    refs = [reference] * len(updates) if isinstance(reference, dict) else list(reference)
    if len(refs) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(refs)} reference states")
    rows = []
    for state, ref in zip(updates, refs, strict=True):
        check_states([state], "cluster", reference=ref, reference_name="its reference state")
        rows.append(
            np.concatenate(
                [
                    (state[k].to(torch.float64) - ref[k].to(torch.float64)).reshape(-1).numpy()
                    for k in sorted(state)
                ]
            )
        )
    if len({r.shape for r in rows}) > 1:
        raise ValueError("updates flatten to vectors of different lengths; shapes differ")
    return np.stack(rows)


def client_vectors_from_data(
    mean_embeddings: np.ndarray, label_histograms: np.ndarray, label_weight: float = 1.0
) -> np.ndarray:
    """``[ē_c / ‖ē_c‖, λ · h_c / Σ h_c]``: a client's mean embedding under the frozen model and
    its label distribution, each scaled to unit size so neither dominates by its units."""
    emb = _unit_rows(np.asarray(mean_embeddings, dtype=np.float64))
    hist = np.asarray(label_histograms, dtype=np.float64)
    if emb.ndim != 2 or hist.ndim != 2 or emb.shape[0] != hist.shape[0] or (hist < 0).any():
        raise ValueError("mean embeddings (C, d) and label histograms (C, k) must match, ≥ 0")
    sums = hist.sum(axis=1, keepdims=True)
    return np.concatenate([emb, label_weight * hist / np.where(sums > 0, sums, 1.0)], axis=1)


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """``S[c, k] = cos(v_c, v_k)``; a zero vector has similarity 0 with everything."""
    unit = _unit_rows(np.asarray(vectors, dtype=np.float64))
    return unit @ unit.T


def cluster(
    vectors: np.ndarray, k: int | None = None, threshold: float | None = None, seed: int = 0
) -> np.ndarray:
    """Cluster labels ``0 … K−1`` for the rows of ``vectors`` (cosine geometry).

    Exactly one of ``k`` (seeded k-means on unit vectors, 10 restarts) or ``threshold``
    (average-linkage agglomerative clustering; clusters merge while their mean cosine
    distance ``1 − cos`` is below it) must be given.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans

    x = _unit_rows(np.asarray(vectors, dtype=np.float64))
    n = x.shape[0]
    if x.ndim != 2 or n == 0 or not np.isfinite(x).all():
        raise ValueError("cluster needs a finite (C, D) array with at least one row")
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of `k` or `threshold`")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if k is not None:
        if k < 1:
            raise ValueError(f"`k` should be positive, got {k}.")
        distinct = len(np.unique(x, axis=0))  # identical clients cannot fill k clusters
        model = KMeans(n_clusters=min(k, distinct), n_init=10, random_state=seed)
        return _first_appearance(model.fit_predict(x))
    assert threshold is not None
    if not 0 < threshold <= 2:
        raise ValueError(f"`threshold` should be a cosine distance in (0, 2], got {threshold}.")
    agg = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="average"
    )
    distance = np.clip(1.0 - x @ x.T, 0.0, 2.0)  # a zero vector is at distance 1 from all
    np.fill_diagonal(distance, 0.0)
    return _first_appearance(agg.fit_predict(distance))


def clustered_fedavg(
    updates: Sequence[tuple[AdapterState, float]], labels: Sequence[int]
) -> dict[int, AdapterState]:
    """One FedAvg per cluster: ``θ_g = Σ_{c ∈ g} n_c θ_c / Σ_{c ∈ g} n_c``."""
    if len(labels) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(labels)} cluster labels")
    groups: dict[int, list[tuple[AdapterState, float]]] = {}
    for update, label in zip(updates, labels, strict=True):
        groups.setdefault(int(label), []).append(update)
    return {label: fedavg(members) for label, members in sorted(groups.items())}


def align_labels(labels: Sequence[int], previous: Sequence[int]) -> list[int]:
    """``labels`` renamed to best match ``previous`` (most clients keep their cluster id).

    Solves the assignment ``max Σ overlap(new g, old h)`` (Hungarian; scipy); a new cluster that
    matches no old one gets the next unused id. Keeps one global per cluster across rounds.
    """
    from scipy.optimize import linear_sum_assignment

    if len(labels) != len(previous):
        raise ValueError(f"{len(labels)} labels but {len(previous)} previous labels")
    new_ids, old_ids = sorted(set(labels)), sorted(set(previous))
    overlap = np.zeros((len(new_ids), len(old_ids)))
    for a, b in zip(labels, previous, strict=True):
        overlap[new_ids.index(a), old_ids.index(b)] += 1
    rows, cols = linear_sum_assignment(-overlap)
    rename = {new_ids[r]: old_ids[c] for r, c in zip(rows, cols, strict=True)}
    spare = iter(i for i in range(len(new_ids) + len(old_ids)) if i not in old_ids)
    for g in new_ids:
        if g not in rename:
            rename[g] = next(spare)
    return [rename[g] for g in labels]


def cluster_updates(
    states: Sequence[AdapterState],
    starts: Sequence[AdapterState],
    k: int = 2,
    seed: int = 0,
    threshold: float | None = None,
) -> list[int]:
    """The registry's partition step: k-means over update directions ``θ_c − θ_c^start``, or,
    with ``threshold``, agglomerative clustering cut at that cosine distance (k then unused)."""
    vectors = client_vectors_from_updates(states, starts)
    if threshold is not None:
        return [int(x) for x in cluster(vectors, threshold=threshold)]
    return [int(x) for x in cluster(vectors, k=k, seed=seed)]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True) if x.ndim == 2 else np.ones(1)
    return x / np.where(norms > 0, norms, 1.0)


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumbers labels 0, 1, … in order of first appearance."""
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(x), len(order)) for x in labels], dtype=np.int64)
