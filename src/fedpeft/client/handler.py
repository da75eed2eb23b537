"""The client's side of one message: decode the global state, train, encode the reply.

Any runtime (in-process or Flower) moves only these bytes, so byte counts are exact. A
payload may carry tensors beside the adapter, named ``x/<part>/<key>`` (``EXTRA``): what a
client half needs from the server (SCAFFOLD's control ``c``) and sends back (``Δc_i``). What
a client keeps between its rounds (``ClientState``) comes in and goes out beside the bytes;
the runtime stores it on the client's side (``client.state``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from fedpeft.client.personal import (
    PersonalKit,
    PersonalPlan,
    personal_state,
    personalised,
    split_personal,
    with_personal,
)
from fedpeft.client.state import ClientState
from fedpeft.client.train import ClientData, train
from fedpeft.compression import decode, encode
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction

EXTRA = "x/"  # prefix of the tensors a payload carries beside the adapter

# message metadata keys (typed constants, not strings scattered across files)
META_CLIENT_ID = "client_id"
META_NUM_EXAMPLES = "num_examples"
META_METRICS = "metrics"
META_ROUND = "round"
META_NONCE = "nonce"  # echoes the instruction's nonce: the reply answers that instruction


@dataclass(frozen=True)
class FitResult:
    """The encoded reply, and what the client keeps now (None: its state did not change)."""

    reply: bytes
    state: ClientState | None = None


def split_extras(tensors: AdapterState) -> tuple[AdapterState, AdapterState]:
    """(the adapter's tensors, the ``x/…`` tensors beside it)."""
    adapter = {k: v for k, v in tensors.items() if not k.startswith(EXTRA)}
    return adapter, {k: v for k, v in tensors.items() if k.startswith(EXTRA)}


def handle_fit(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    state: ClientState | None = None,
    kit: PersonalKit | None = None,
) -> FitResult:
    """One round on this client: the payload's adapter loaded (joined with the client's
    personal part, if its plan keeps one: ``client/personal.py``), trained, the reply
    encoded without the personal part, which the client keeps."""
    adapter, _extras = split_extras(decode(payload)[0])
    plan = PersonalPlan.from_json(instruction.personal)
    kept = state or {}
    model = personalised(model, adapter, plan, kept, kit)
    update = train(model, instruction, data, device)
    if not plan.keeps:
        return FitResult(encode_reply(update, instruction))
    mine = personal_state(model, update.state, plan)
    shared, _ = split_personal(update.state, plan.parts)
    reply = encode_reply(replace(update, state=shared), instruction)
    return FitResult(reply, with_personal(kept, mine))


def encode_reply(update: ClientUpdate, instruction: TrainInstruction) -> bytes:
    """The reply's bytes: the adapter and its extras, with the metadata that binds it to
    ``instruction``."""
    meta: dict[str, object] = {
        META_CLIENT_ID: update.client_id,
        META_ROUND: instruction.round,
        META_NONCE: instruction.nonce,
        META_NUM_EXAMPLES: update.num_examples,
        META_METRICS: update.metrics,
    }
    return encode(update.state | update.extras, meta)
