"""Seeded client partitions from ``flwr_datasets`` partitioners, and client data profiles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.errors import FedpeftError


def partition_indices(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Example indices per client: IID, Dirichlet(α) over labels, or k classes per client.

    The partitioners are Flower Datasets'; the data is shuffled with ``seed`` first because
    ``IidPartitioner`` takes contiguous shards.
    """
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    n, k = len(labels), cfg.num_clients
    if cfg.partition == "natural":
        raise FedpeftError(
            "`data.partition = 'natural'` splits question-answering data by article; this "
            "dataset has no articles, so use 'iid', 'dirichlet' or 'pathological'."
        )
    if n < k * cfg.min_partition_size:
        raise FedpeftError(
            f"{n} training examples cannot give `data.num_clients`={k} clients "
            f"`data.min_partition_size`={cfg.min_partition_size} examples each; "
            "lower one or raise `data.train_size`."
        )
    perm = np.random.default_rng(seed).permutation(n)
    ds = datasets.Dataset.from_dict({"label": labels[perm].tolist(), "idx": perm.tolist()})
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
    try:
        parts = [
            np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64)) for i in range(k)
        ]
    except ValueError as e:
        raise FedpeftError(f"partitioning {n} examples over {k} clients failed: {e}") from None
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise FedpeftError(
            f"partition `{cfg.partition}` left clients {empty[:10]} with no data; use fewer "
            "clients, more data, or more `data.classes_per_client`."
        )
    return parts


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
    entropy = float(-(p * np.log2(p)).sum()) if len(p) else 0.0
    mean_len = float(lengths.mean()) if len(lengths) else math.nan
    return DataProfile(int(hist.sum()), hist.tolist(), round(entropy, 4), round(mean_len, 2))
