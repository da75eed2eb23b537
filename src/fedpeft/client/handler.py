"""The client's side of one message: decode the global state, train, encode the reply.

Any runtime (in-process or Flower) moves only these bytes, so byte counts are exact.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpeft.client.features import class_feature_stats, num_classes
from fedpeft.client.train import ClientData, train
from fedpeft.compression import decode, encode
from fedpeft.peft import set_adapter_state
from fedpeft.types import TrainInstruction

# message metadata keys (typed constants, not strings scattered across files)
META_CLIENT_ID = "client_id"
META_NUM_EXAMPLES = "num_examples"
META_METRICS = "metrics"
META_ROUND = "round"

KIND_TRAIN = "train"
KIND_FEATURE_STATS = "feature_stats"  # the class feature statistics of client/features.py
STATS_BATCH_SIZE = 64  # forward passes only


def handle_fit(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
) -> bytes:
    state, _ = decode(payload)
    set_adapter_state(model, state)
    if instruction.kind == KIND_FEATURE_STATS:  # before round 1: statistics, no training
        stats = class_feature_stats(model, data, num_classes(state), STATS_BATCH_SIZE, device)
        return encode(stats, _meta(instruction, len(data.indices), {}))
    update = train(model, instruction, data, device)
    return encode(update.state, _meta(instruction, update.num_examples, update.metrics))


def _meta(
    instruction: TrainInstruction, num_examples: int, metrics: dict[str, float]
) -> dict[str, object]:
    return {
        META_CLIENT_ID: instruction.client_id,
        META_ROUND: instruction.round,
        META_NUM_EXAMPLES: num_examples,
        META_METRICS: metrics,
    }
