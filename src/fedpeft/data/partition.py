"""Seeded client partitions from ``flwr_datasets`` partitioners, and client data profiles."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.errors import FedpeftError

log = logging.getLogger(__name__)

DIRICHLET_RESEEDS = 8  # seeds a Dirichlet split is tried with before it is given up


def partition_indices(
    labels: np.ndarray, cfg: DataConfig, seed: int, groups: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Example indices per client: IID, Dirichlet(α) over labels, k classes per client, or
    ``natural`` (correlated with the clients' device ``groups``, see ``natural_partition``).

    The partitioners are Flower Datasets'; the data is shuffled with ``seed`` first because
    ``IidPartitioner`` takes contiguous shards.
    """
    if cfg.partition == "natural":
        if groups is None or len(groups) != cfg.num_clients:
            raise FedpeftError(
                "`data.partition = 'natural'` needs each client's device tier; this runtime "
                "gave none (use the in-process runtime with [profiles])."
            )
        return _checked(natural_partition(labels, groups, cfg.natural_share, seed), cfg)
    import datasets

    n, k = len(labels), cfg.num_clients
    if n < k * cfg.min_partition_size:
        limit = cfg.train_size is not None and n >= cfg.train_size  # else: the data ran out
        raise FedpeftError(
            f"{n} training examples cannot give `data.num_clients`={k} clients "
            f"`data.min_partition_size`={cfg.min_partition_size} examples each; "
            + (
                "lower one or raise `data.train_size`."
                if limit
                else "lower one (that is all the training data)."
            )
        )
    perm = np.random.default_rng(seed).permutation(n)
    ds = datasets.Dataset.from_dict({"label": labels[perm].tolist(), "idx": perm.tolist()})
    failure = ""
    # Flower's Dirichlet sampler gives up after 10 draws that leave a client under
    # `min_partition_size` (likely with few classes and a small α); a draw from a seed derived
    # from the run's is then tried, the same in every process. The first try is ``seed``'s.
    for attempt in range(DIRICHLET_RESEEDS if cfg.partition == "dirichlet" else 1):
        tried = seed if attempt == 0 else derived_seed(seed, attempt)
        try:
            return _checked(_load(ds, labels, cfg, tried), cfg)
        except ValueError as e:  # its first sentence: the rest advises Flower's own options
            failure = str(e).split(". ")[0].rstrip(".")
    helps = (
        "a larger `data.alpha` or `data.train_size`"
        if cfg.partition == "dirichlet"
        else "more examples of each class, another `data.classes_per_client`"
    )
    raise FedpeftError(
        f"partitioning {n} examples over {k} clients failed: {failure} (tried "
        f"{DIRICHLET_RESEEDS if cfg.partition == 'dirichlet' else 1} seeds; {helps}, or "
        "fewer clients, makes it possible)."
    )


def derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _load(ds: Any, labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """The partitioner's index lists for ``seed`` (``ValueError`` if it cannot draw them)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    k = cfg.num_clients
    if cfg.partition == "iid":
        part = IidPartitioner(num_partitions=k)
    elif cfg.partition == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=k,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=cfg.min_partition_size,
            self_balancing=False,
            seed=seed,
        )
    else:
        num_labels = len(np.unique(labels))
        if cfg.classes_per_client > num_labels:
            raise FedpeftError(
                f"`data.classes_per_client` is {cfg.classes_per_client} but the data has only "
                f"{num_labels} classes."
            )
        part = PathologicalPartitioner(
            num_partitions=k,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            seed=seed,
        )
    part.dataset = ds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = [
            np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64)) for i in range(k)
        ]
    # Flower warns once per redraw of a Dirichlet sample that left a client under
    # `min_partition_size` (a screenful on small data); said once here, other warnings kept
    redraws = [w for w in caught if "min_partition_size" in str(w.message)]
    for w in caught:
        if w not in redraws:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if redraws:
        log.info(
            "Dirichlet(%g) split redrawn %d times until every client had at least %d examples",
            cfg.alpha,
            len(redraws),
            cfg.min_partition_size,
        )
    return parts


def _checked(parts: list[np.ndarray], cfg: DataConfig) -> list[np.ndarray]:
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise FedpeftError(
            f"partition `{cfg.partition}` left clients {empty[:10]} with no data; use fewer "
            "clients, more data, or more `data.classes_per_client`."
        )
    return parts


def holdout(
    labels: np.ndarray, partitions: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's partition split into (train, held-out), stratified by label, seeded.

    Client k with n examples holds out ``T = max(1, round(f·n))`` of them (none when
    ``f = 0`` or n < 2). Class y's share is ``⌊f·n_y⌋`` plus one for the classes with the
    largest remainders ``f·n_y − ⌊f·n_y⌋`` until T is reached (Hamilton's largest-remainder
    rule, ties broken at random), so the held-out label mix follows the client's own.
    """
    train, test = [], []
    for k, part in enumerate(partitions):
        rng = np.random.default_rng([seed, 0x7E57, k])
        n = len(part)
        total = 0 if fraction <= 0 or n < 2 else max(1, round(fraction * n))
        classes, counts = np.unique(labels[part], return_counts=True)
        exact = fraction * counts
        take = np.floor(exact).astype(np.int64)
        order = np.lexsort((rng.random(len(classes)), -(exact - take)))  # largest first
        for i in order[: max(0, total - int(take.sum()))]:
            take[i] += 1
        held = [
            rng.choice(part[labels[part] == y], size=int(t), replace=False)
            for y, t in zip(classes, take, strict=True)
        ]
        chosen = np.sort(np.concatenate([np.zeros(0, np.int64), *held]).astype(np.int64))
        test.append(chosen)
        train.append(np.setdiff1d(part, chosen))
    return train, test


def natural_partition(
    labels: np.ndarray, groups: Sequence[int], share: float, seed: int
) -> list[np.ndarray]:
    """A device-correlated ("natural") split: data follows the device that holds it.

    ``groups[c]`` ranks client ``c``'s device (0 = the weakest tier). Class ``k``'s home is
    the ``(k mod G)``-th weakest group present, so the weakest devices always own a class: a
    ``share`` of its examples goes to the home group's clients and the rest to everyone else,
    each example to a client drawn uniformly (``np.random.default_rng(seed)``). Leaving the
    weak devices out then loses most of a class, as when phones alone hold a kind of data.
    With one group, or ``share = 0``, every example goes to a uniformly drawn client.
    """
    rng = np.random.default_rng([seed, 0x7A7])
    order = sorted(set(groups))
    clients = np.arange(len(groups))
    owned: list[list[int]] = [[] for _ in groups]
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        home_group = order[int(k) % len(order)]
        home = clients[np.asarray(groups) == home_group]
        away = clients[np.asarray(groups) != home_group]
        n_home = len(idx) if len(away) == 0 else round(share * len(idx)) if len(home) else 0
        for part, pool in ((idx[:n_home], home), (idx[n_home:], away)):
            for i, c in zip(part, rng.choice(pool, size=len(part)), strict=True):
                owned[int(c)].append(int(i))
    return [np.sort(np.asarray(o, dtype=np.int64)) for o in owned]


@dataclass(frozen=True)
class DataProfile:
    """What a client's data looks like (sent to the server for allocation; no examples)."""

    num_examples: int
    label_histogram: list[int]
    label_entropy: float  # in bits
    mean_length: float  # tokens

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def data_profile(labels: np.ndarray, lengths: np.ndarray, num_labels: int) -> DataProfile:
    hist = np.bincount(labels, minlength=num_labels)
    p = hist[hist > 0] / max(1, hist.sum())
    entropy = float((p * np.log2(1 / p)).sum()) if len(p) else 0.0  # one class: 0.0, not -0.0
    mean_len = float(lengths.mean()) if len(lengths) else math.nan
    return DataProfile(int(hist.sum()), hist.tolist(), round(entropy, 4), round(mean_len, 2))
