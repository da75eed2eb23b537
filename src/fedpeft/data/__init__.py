"""Datasets: registry and loaders (local first, hub second), tokenisation, partitions."""

from fedpeft.data.partition import DataProfile, data_profile, partition_indices
from fedpeft.data.registry import dataset_names, load_dataset, register_dataset
from fedpeft.data.sources import RawDataset, RawSplit, data_dirs
from fedpeft.data.tokenized import Batch, TokenizedSplit, tokenize_split

__all__ = [
    "Batch",
    "DataProfile",
    "RawDataset",
    "RawSplit",
    "TokenizedSplit",
    "data_dirs",
    "data_profile",
    "dataset_names",
    "load_dataset",
    "partition_indices",
    "register_dataset",
    "tokenize_split",
]
