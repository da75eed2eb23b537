"""The client's side of one message: decode the global state, train, encode the reply.

Any runtime (in-process or Flower) moves only these bytes, so byte counts are exact.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpeft.client.train import ClientData, train
from fedpeft.compression import decode, encode
from fedpeft.peft import set_adapter_state
from fedpeft.types import TrainInstruction

# message metadata keys (typed constants, not strings scattered across files)
META_CLIENT_ID = "client_id"
META_NUM_EXAMPLES = "num_examples"
META_METRICS = "metrics"
META_ROUND = "round"
META_NONCE = "nonce"  # echoes the instruction's nonce: the reply answers that instruction


def handle_fit(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
) -> bytes:
    state, _ = decode(payload)
    set_adapter_state(model, state)
    update = train(model, instruction, data, device)
    meta: dict[str, object] = {
        META_CLIENT_ID: update.client_id,
        META_ROUND: instruction.round,
        META_NONCE: instruction.nonce,
        META_NUM_EXAMPLES: update.num_examples,
        META_METRICS: update.metrics,
    }
    return encode(update.state, meta)
