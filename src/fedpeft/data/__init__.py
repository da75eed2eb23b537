"""Datasets: registry and loaders (local first, hub second), tokenisation, image splits,
partitions."""

from fedpeft.data.genqa import GenQASplit
from fedpeft.data.instruct import InstructSplit
from fedpeft.data.partition import DataProfile, data_profile, holdout, partition_indices
from fedpeft.data.qa import QABatch, QASplit
from fedpeft.data.registry import (
    check_dataset_name,
    dataset_names,
    heldout_train,
    load_dataset,
    register_dataset,
)
from fedpeft.data.sources import ImageArrays, RawDataset, RawSplit, data_dirs
from fedpeft.data.tokenized import Batch, TokenizedSplit, reading_warnings, tokenize_split

from fedpeft.data import text_sets  # noqa: F401  # isort: skip - registers more text sets
from fedpeft.data.images import (  # isort: skip - registers the image datasets
    ImageBatch,
    ImagePreprocess,
    ImageSplit,
    image_split,
    is_image_dataset,
    stored_form,
)

from fedpeft.data.custom_images import check_custom_modality  # isort: skip - registers
from fedpeft.data.paired import MatchBatch, MatchSplit, VQABatch, VQASplit  # isort: skip
from fedpeft.data.detection import DetectionBatch, DetectionSplit  # isort: skip

# batches trained and scored by the model's own loss: no class ids to weigh logits by
OwnLossBatch = QABatch | MatchBatch | VQABatch | DetectionBatch
# what training and evaluation consume
Split = (
    TokenizedSplit
    | ImageSplit
    | InstructSplit
    | QASplit
    | GenQASplit
    | MatchSplit
    | VQASplit
    | DetectionSplit
)

__all__ = [
    "Batch",
    "check_custom_modality",
    "check_dataset_name",
    "DataProfile",
    "DetectionBatch",
    "DetectionSplit",
    "ImageArrays",
    "ImageBatch",
    "ImagePreprocess",
    "ImageSplit",
    "GenQASplit",
    "InstructSplit",
    "MatchBatch",
    "MatchSplit",
    "OwnLossBatch",
    "QABatch",
    "QASplit",
    "RawDataset",
    "RawSplit",
    "Split",
    "TokenizedSplit",
    "VQABatch",
    "VQASplit",
    "data_dirs",
    "data_profile",
    "image_split",
    "is_image_dataset",
    "dataset_names",
    "heldout_train",
    "load_dataset",
    "holdout",
    "partition_indices",
    "register_dataset",
    "stored_form",
    "reading_warnings",
    "tokenize_split",
]
