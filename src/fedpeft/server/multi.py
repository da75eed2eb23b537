"""Rules that hold or combine several global adapters: clustered aggregation (one global
per cluster of clients, each client served by its cluster's) and fusion across method
groups (``server.fusion``). Both run on the groups of the server state."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fedpeft.aggregation.cluster import align_labels
from fedpeft.aggregation.hetero import aggregate_partial, lift
from fedpeft.server.groups import GroupBook
from fedpeft.server.protocols import FusingModel, GlobalModel
from fedpeft.server.state import DEFAULT_GROUP, cluster_group
from fedpeft.server.strategy import Strategy
from fedpeft.types import AdapterState, ClientUpdate

log = logging.getLogger("fedpeft.server")


def aggregate_clusters(
    strategy: Strategy,
    adapters: dict[str, AdapterState],
    accepted: Mapping[int, ClientUpdate],
    views: Mapping[int, AdapterState],
    groups: Mapping[int, str],
    clusters: Mapping[int, int],
    num_clients: int,
) -> tuple[dict[str, AdapterState], dict[int, int]]:
    """Clients are clustered by their update directions (``strategy.partition``), labels are
    aligned with last round's so each cluster keeps its global, and each cluster's global is
    the rule over its members (started from the global its members were served).
    Returns the adapters and every client's cluster label so far."""
    assert strategy.partition is not None
    cids = sorted(accepted)
    labels = strategy.partition([accepted[c].state for c in cids], [views[c] for c in cids])
    previous = [clusters.get(c, -1) for c in cids]
    labels = align_labels(labels, previous) if any(p >= 0 for p in previous) else labels
    out = dict(adapters)
    for label in sorted(set(labels)):
        members = [c for c, g in zip(cids, labels, strict=True) if g == label]
        start = adapters.get(cluster_group(label), adapters[groups[members[0]]])
        ups = [(accepted[c].state, float(accepted[c].num_examples)) for c in members]
        out[cluster_group(label)] = aggregate_partial(ups, start, strategy.aggregate)
    known = dict(clusters) | {c: int(g) for c, g in zip(cids, labels, strict=True)}
    if DEFAULT_GROUP in out and len(known) >= num_clients:
        del out[DEFAULT_GROUP]  # every client is served by a cluster now
    return out, known


def fuse_groups(
    strategy: Strategy, model: GlobalModel, book: GroupBook, adapters: dict[str, AdapterState]
) -> dict[str, AdapterState]:
    """Each method group's global distilled from the ensemble of all groups' models."""
    if strategy.fuse is None or not isinstance(model, FusingModel) or len(adapters) < 2:
        return adapters
    parts = {g: book.eval_parts(g, env) for g, env in adapters.items()}
    fused = model.fuse(strategy.fuse, {g: (p[0], p[1], p[2]) for g, p in parts.items()})
    out = dict(adapters)
    for group, state in fused.items():
        _, _, _, grown, alpha = parts[group]
        out[group] = lift(state, grown, alpha)
    return out
