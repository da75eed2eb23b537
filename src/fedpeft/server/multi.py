"""Rules that hold or combine several global adapters: clustered aggregation (one global
per cluster of clients, each client served by its cluster's) and fusion across method
groups by distillation. Both run on the groups of ``server.loop``'s grouped state."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fedpeft.aggregation.cluster import align_labels
from fedpeft.aggregation.hetero import aggregate_partial, lift
from fedpeft.server.assign import DEFAULT_GROUP
from fedpeft.server.groups import GroupBook
from fedpeft.server.strategy import Strategy
from fedpeft.types import AdapterState, ClientUpdate

log = logging.getLogger("fedpeft.server")

CLUSTERS = "clusters"  # ServerState.extra key: client id (str) → its cluster label


def cluster_group(label: int) -> str:
    return f"cluster-{label}"


def served_group(extra: dict[str, Any], client_id: int, group: str) -> str:
    """A client's group: its cluster's, once it has one (clustered aggregation)."""
    label = extra.get(CLUSTERS, {}).get(str(client_id))
    return cluster_group(int(label)) if label is not None else group


def aggregate_clusters(
    strategy: Strategy,
    adapters: dict[str, AdapterState],
    accepted: dict[int, ClientUpdate],
    views: dict[int, AdapterState],
    groups: dict[int, str],
    extra: dict[str, Any],
    num_clients: int,
) -> tuple[dict[str, AdapterState], dict[str, Any]]:
    """Clients are clustered by their update directions (``strategy.partition``), labels are
    aligned with last round's so each cluster keeps its global, and each cluster's global is
    the rule over its members (started from the global its members were served)."""
    assert strategy.partition is not None
    cids = sorted(accepted)
    labels = strategy.partition([accepted[c].state for c in cids], [views[c] for c in cids])
    known = dict(extra.get(CLUSTERS, {}))
    previous = [int(known.get(str(c), -1)) for c in cids]
    labels = align_labels(labels, previous) if any(p >= 0 for p in previous) else labels
    out = dict(adapters)
    for label in sorted(set(labels)):
        members = [c for c, g in zip(cids, labels, strict=True) if g == label]
        start = adapters.get(cluster_group(label), adapters[groups[members[0]]])
        ups = [(accepted[c].state, float(accepted[c].num_examples)) for c in members]
        out[cluster_group(label)] = aggregate_partial(ups, start, strategy.aggregate)
    known.update({str(c): int(g) for c, g in zip(cids, labels, strict=True)})
    if DEFAULT_GROUP in out and len(known) >= num_clients:
        del out[DEFAULT_GROUP]  # every client is served by a cluster now
    return out, extra | {CLUSTERS: known}


class Fusable(Protocol):
    def fuse(
        self, fuse: Any, states: dict[str, tuple[AdapterState, str, str]]
    ) -> dict[str, AdapterState]: ...


def fuse_groups(
    strategy: Strategy, model: object, book: GroupBook, adapters: dict[str, AdapterState]
) -> dict[str, AdapterState]:
    """Each method group's global distilled from the ensemble of all groups' models."""
    fuse = getattr(model, "fuse", None)
    if strategy.fuse is None or fuse is None or len(adapters) < 2:
        return adapters
    parts = {g: book.eval_parts(g, env) for g, env in adapters.items()}
    fused = fuse(strategy.fuse, {g: (p[0], p[1], p[2]) for g, p in parts.items()})
    out = dict(adapters)
    for group, state in fused.items():
        _, _, _, grown, alpha = parts[group]
        out[group] = lift(state, grown, alpha)
    return out
