"""The client's half of secure aggregation in a round (``privacy.secagg``), one stage per
instruction kind, through the same pool as training::

    kind                  payload (server → client)         reply (client → server)
    secagg_setup          Setup                              PublicKeys
    secagg_share_keys     KeyBook                            EncryptedShares
    secagg_masked_input   ForwardedShares + training payload MaskedInput (nothing else)
    secagg_unmask         UnmaskRequest                      UnmaskShares

At the masked stage the client trains as for a ``train`` instruction (local DP too, when
asked), then sends only ``y = q([w·Δ, w, w·loss]) + masks``: Δ = θ_c − θ_served (clipped
to S first under central DP, where w = 1 and the loss is left out), w its example count,
so the server divides the summed weighted update by the summed count.

Where the secrets live: between stages a client's keys, self-mask seed and the shares it
holds are its kept state, one uint8 tensor ``secagg/memory`` (an encoded
``ClientMemory``). The runtime stores it on the client's side like any kept state; the
in-process pools keep it in ``SecretStore`` (this process's memory, never on disk), and
hand it to a forked worker with the request and back with the reply, as they do with
the rest of a client's kept state.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.client.state import ClientState
from fedpeft.privacy.clip import clip_delta, delta
from fedpeft.privacy.secagg import ProtocolError, SecAggClient, state_vector, vector_length
from fedpeft.privacy.secagg.messages import (
    ClientMemory,
    ForwardedShares,
    KeyBook,
    MessageError,
    Setup,
    UnmaskRequest,
    decode,
    encode,
)
from fedpeft.privacy.settings import ClientDp
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction

KIND_SETUP = "secagg_setup"
KIND_SHARE_KEYS = "secagg_share_keys"
KIND_MASKED_INPUT = "secagg_masked_input"
KIND_UNMASK = "secagg_unmask"
SECAGG_KINDS = (KIND_SETUP, KIND_SHARE_KEYS, KIND_MASKED_INPUT, KIND_UNMASK)
SECRETS = "secagg/"  # prefix of the kept-state keys that hold a round's secrets
_MEMORY = SECRETS + "memory"
_FRAME = struct.Struct(">I")


@dataclass(frozen=True)
class Trained:
    """A training payload's result: the update, the state it started from (the served
    adapter) and the client's kept state after it (None: unchanged)."""

    update: ClientUpdate
    served: AdapterState
    kept: ClientState | None


Trainer = Callable[[bytes], Trained]


def join_payload(message: bytes, payload: bytes) -> bytes:
    """The masked stage's payload: the encoded ``ForwardedShares`` then the training bytes."""
    return _FRAME.pack(len(message)) + message + payload


def split_payload(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < _FRAME.size:
        raise ProtocolError("masked-input payload too short")
    (n,) = _FRAME.unpack_from(data)
    if _FRAME.size + n > len(data):
        raise ProtocolError("masked-input payload shorter than its message")
    return data[_FRAME.size : _FRAME.size + n], data[_FRAME.size + n :]


def secure_length(template: AdapterState) -> int:
    """Values in a client's vector for a shared state like ``template``."""
    return vector_length(template) + 1


def update_vector(d: AdapterState, weight: float, loss: float) -> np.ndarray:
    """``[w·Δ (sorted keys, flattened), w, w·loss]`` in float64: summed over clients it
    carries ``Σ w_c Δ_c``, ``Σ w_c`` and ``Σ w_c·loss_c``."""
    return np.concatenate([state_vector(d, weight), [weight * loss]])


def split_sum(total: np.ndarray, template: AdapterState) -> tuple[AdapterState, float, float]:
    """(``Σ w_c Δ_c`` shaped like ``template``, float64; ``Σ w_c``; ``Σ w_c·loss_c``)."""
    if len(total) != secure_length(template):
        raise ValueError(f"a sum of {len(total)} values for {secure_length(template)}")
    out: AdapterState = {}
    start = 0
    for k in sorted(template):
        n = template[k].numel()
        out[k] = torch.from_numpy(total[start : start + n].copy()).reshape(template[k].shape)
        start += n
    return out, float(total[-2]), float(total[-1])


def contribution(update: ClientUpdate, served: AdapterState, ins: TrainInstruction) -> np.ndarray:
    """What this client adds to the round's sum (before masking)."""
    missing = sorted(set(served) - set(update.state))
    if missing:
        raise ProtocolError(f"the trained state lacks {missing[0]!r}")
    d = delta({k: update.state[k] for k in served}, served)
    dp = ClientDp.from_json(ins.privacy)
    if dp is not None and dp.mode == "central":  # DP-FedAvg: clipped, unweighted, no loss
        vector = update_vector(clip_delta(d, dp.clip_norm), 1.0, 0.0)
    else:
        loss = float(update.metrics.get("loss", 0.0))
        vector = update_vector(d, float(update.num_examples), loss if math.isfinite(loss) else 0.0)
    if not np.isfinite(vector).all():
        raise ValueError("the update holds NaN or Inf; nothing is sent")
    return vector


def handle_secagg(
    ins: TrainInstruction, payload: bytes, kept: ClientState, trainer: Trainer
) -> tuple[bytes, ClientState]:
    """One stage: (the encoded reply, the state to keep now — the round's secrets, and at
    the masked stage whatever training changed). ``ProtocolError`` or ``MessageError``
    when the server's message is not what this stage expects: the client stops answering."""
    if ins.kind == KIND_SETUP:
        client = SecAggClient(ins.client_id)
        setup = decode(payload, Setup)
        if setup.round != ins.round:
            raise ProtocolError("setup for another round")
        return encode(client.on_setup(setup)), _with_memory({}, client)
    client = restore(kept, ins)
    if ins.kind == KIND_SHARE_KEYS:
        return encode(client.on_keybook(decode(payload, KeyBook))), _with_memory({}, client)
    if ins.kind == KIND_MASKED_INPUT:
        message, train_payload = split_payload(payload)
        forwarded = decode(message, ForwardedShares)
        trained = trainer(train_payload)
        masked = client.on_forwarded(forwarded, contribution(trained.update, trained.served, ins))
        changed = trained.kept if trained.kept is not None else {}
        return encode(masked), _with_memory(changed, client)
    if ins.kind == KIND_UNMASK:  # the last stage: the secrets are dropped
        return encode(client.on_unmask(decode(payload, UnmaskRequest))), {}
    raise ProtocolError(f"unknown secure-aggregation stage {ins.kind!r}")


def restore(kept: ClientState, ins: TrainInstruction) -> SecAggClient:
    """The client's protocol state for this round from its kept state."""
    raw = kept.get(_MEMORY)
    if raw is None:
        raise ProtocolError(f"no secure-aggregation state kept for round {ins.round}")
    try:
        memory = decode(raw.numpy().tobytes(), ClientMemory)
    except MessageError as e:
        raise ProtocolError(str(e)) from None
    client = SecAggClient.restore(memory)
    setup = decode(memory.setup, Setup)
    if client.id != ins.client_id or setup.round != ins.round:
        raise ProtocolError(f"the kept secure-aggregation state is not round {ins.round}'s")
    return client


def _with_memory(state: ClientState, client: SecAggClient) -> ClientState:
    blob = bytearray(encode(client.memory()))
    return state | {_MEMORY: torch.frombuffer(blob, dtype=torch.uint8).clone()}


def split_secrets(state: ClientState) -> tuple[ClientState, ClientState]:
    """(the kept state without the round's secrets, the secrets)."""
    secrets = {k: v for k, v in state.items() if k.startswith(SECRETS)}
    return {k: v for k, v in state.items() if k not in secrets}, secrets


class SecretStore:
    """The in-process pools' client-side memory of secure-aggregation secrets: per (run,
    client), the current round's only, never written to disk (``ClientStateStore`` would
    write them into the run folder)."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], ClientState] = {}

    def load(self, ins: TrainInstruction) -> ClientState:
        return dict(self._kept.get((ins.run_id, ins.client_id), {}))

    def save(self, ins: TrainInstruction, secrets: ClientState) -> None:
        """Keeps ``secrets`` (empty: forgets the client's)."""
        if secrets:
            self._kept[(ins.run_id, ins.client_id)] = dict(secrets)
        else:
            self._kept.pop((ins.run_id, ins.client_id), None)
