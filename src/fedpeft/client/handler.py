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

from fedpeft.client.features import class_feature_stats, num_classes
from fedpeft.client.personal import (
    PersonalKit,
    PersonalPlan,
    personal_state,
    personalised,
    split_personal,
    with_personal,
)
from fedpeft.client.privacy import dpsgd_settings, local_dp
from fedpeft.client.scaffold import SCAFFOLD, scaffold_round, under_prefix
from fedpeft.client.secagg import SECAGG_KINDS, Trained, handle_secagg, split_secrets
from fedpeft.client.state import ClientState
from fedpeft.client.train import ClientData, train
from fedpeft.compression import (
    CompressionScheme,
    decode,
    decode_update,
    encode,
    encode_update,
    rounding_generator,
)
from fedpeft.errors import FedpeftError
from fedpeft.peft.state import set_adapter_state, without_merged
from fedpeft.privacy.settings import ClientDp
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction

EXTRA = "x/"  # prefix of the tensors a payload carries beside the adapter
MERGED_EXTRA = "x/merged/"  # the global's merged sums (FLoRA: peft/flora.py), loaded, not sent back
RESIDUAL = "ef/"  # the client's error-feedback residual in its kept state

# message metadata keys (typed constants, not strings scattered across files)
META_CLIENT_ID = "client_id"
META_NUM_EXAMPLES = "num_examples"
META_METRICS = "metrics"
META_ROUND = "round"
META_NONCE = "nonce"  # echoes the instruction's nonce: the reply answers that instruction

KIND_TRAIN = "train"
KIND_FEATURE_STATS = "feature_stats"  # the class feature statistics of client/features.py
KIND_CLASS_MEANS = "class_means"  # the same without the second moment (the bias refresh)
STATS_KINDS = (KIND_FEATURE_STATS, KIND_CLASS_MEANS)
STATS_BATCH_SIZE = 64  # forward passes only


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
    initial: AdapterState | None = None,
    kit: PersonalKit | None = None,
) -> FitResult:
    """One round on this client: the payload's adapter loaded (joined with the client's
    personal part, if its plan keeps one: ``client/personal.py``) and trained — or, for a
    ``feature_stats`` instruction (round 0), its class feature statistics sent instead — (DP-SGD, or
    local DP on the shared update, when the instruction's ``privacy`` asks), the reply
    encoded without the personal part, which the client keeps (``personal/…`` in its
    state); compressed when the instruction names a scheme, with this client's
    error-feedback residual kept beside it (``ef/…``). An instruction with an
    ``objective`` runs that client half instead (SCAFFOLD: ``client/scaffold.py``, its
    control ``c_i`` kept as ``scaffold/c_i/…``). A compressed payload is a delta
    from ``initial``, the run's freshly initialised adapter that this client rebuilt from
    the config. A secure-aggregation stage (``client/secagg.py``) trains at its masked
    stage the same way and replies with the masked vector only."""
    kept = state or {}
    if instruction.kind in SECAGG_KINDS:  # a secure-aggregation stage (client/secagg.py)
        plain, own = replace(instruction, kind=KIND_TRAIN), split_secrets(kept)[0]

        def trainer(train_payload: bytes) -> Trained:
            if plain.compression:
                raise FedpeftError("a secure-aggregation reply cannot be compressed.")
            return train_round(model, train_payload, plain, data, device, own, initial, kit)

        reply, keep = handle_secagg(instruction, payload, kept, trainer)
        return FitResult(reply, keep)
    if instruction.kind in STATS_KINDS:  # statistics, no training
        model, adapter, _extras, _plan = served_model(
            model, payload, instruction, kept, initial, kit
        )
        second = instruction.kind != KIND_CLASS_MEANS  # the bias refresh needs class means
        stats = class_feature_stats(
            model, data, num_classes(adapter), STATS_BATCH_SIZE, device, second
        )
        return FitResult(
            encode_reply(ClientUpdate(instruction.client_id, stats, len(data.indices)), instruction)
        )
    if instruction.objective:  # a client half that trains instead (SCAFFOLD)
        return objective_round(model, payload, instruction, data, device, kept, initial, kit)
    trained = train_round(model, payload, instruction, data, device, kept, initial, kit)
    if instruction.compression:
        now = trained.kept if trained.kept is not None else kept
        return compressed_reply(trained.update, trained.served, instruction, now)
    return FitResult(encode_reply(trained.update, instruction), trained.kept)


def train_round(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    kept: ClientState,
    initial: AdapterState | None = None,
    kit: PersonalKit | None = None,
) -> Trained:
    """The payload's adapter (joined with the client's personal part) trained, the personal
    part split off and kept (None: the kept state did not change), local DP applied."""
    model, adapter, _extras, plan = served_model(
        model, payload, instruction, kept, initial, kit, data, device
    )
    dp = ClientDp.from_json(instruction.privacy)
    update = train(model, instruction, data, device, dpsgd_settings(dp))
    update = replace(update, state=without_merged(update.state))  # the server has them
    changed = None
    if plan.keeps:  # the personal part stays here; only the shared tensors travel
        mine = personal_state(model, update.state, plan)
        update = replace(update, state=split_personal(update.state, plan.parts)[0])
        changed = with_personal(kept, mine)
    if dp is not None and dp.mode == "local":
        update = local_dp(update, adapter, dp, instruction)
    return Trained(update, adapter, changed)


def served_model(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    kept: ClientState,
    initial: AdapterState | None,
    kit: PersonalKit | None,
    data: ClientData | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, AdapterState, AdapterState, PersonalPlan]:
    """The model with the payload's adapter loaded (joined with the client's personal part;
    ``data``: the client's training share, where a first personal head starts from it),
    that adapter, the payload's ``x/…`` extras and the instruction's personal plan."""
    adapter, extras = split_extras(served_state(payload, instruction, initial))
    plan = PersonalPlan.from_json(instruction.personal)
    model = personalised(model, adapter, plan, kept, kit, data, device)
    merged = under_prefix(extras, MERGED_EXTRA)
    if merged:  # the model under the adapter, as the server merged it (FLoRA)
        set_adapter_state(model, merged)
    return model, adapter, extras, plan


def objective_round(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    kept: ClientState,
    initial: AdapterState | None = None,
    kit: PersonalKit | None = None,
) -> FitResult:
    """The instruction's client half (SCAFFOLD: ``client/scaffold.py``) on the payload's
    adapter and extras; its reply is plain and its control ``c_i`` is kept."""
    model, _adapter, extras, plan = served_model(model, payload, instruction, kept, initial, kit)
    check_objective(instruction, plan, ClientDp.from_json(instruction.privacy))
    update, now = scaffold_round(model, instruction, data, device, extras, kept)
    return FitResult(encode_reply(update, instruction), now)


def check_objective(ins: TrainInstruction, plan: PersonalPlan, dp: ClientDp | None) -> None:
    """A client half this client runs, alone: SCAFFOLD's reply is plain (no compression, no
    DP, no personal part; the server's config refuses those combinations too)."""
    if ins.objective != SCAFFOLD:
        raise FedpeftError(
            f"the instruction asks for client objective {ins.objective!r}, "
            f"which this client does not know; it knows {SCAFFOLD!r}."
        )
    if ins.compression or ins.compression_down or dp is not None or plan.keeps:
        raise FedpeftError(
            "a SCAFFOLD instruction cannot also ask for compression, DP or a personal part."
        )


def served_state(
    payload: bytes, instruction: TrainInstruction, initial: AdapterState | None
) -> AdapterState:
    """The tensors the server sent: decoded plainly, or ``θ_init + Δ̂`` when the instruction
    says the payload is compressed (``compression.bits_down``)."""
    if not instruction.compression_down:
        return decode(payload)[0]
    if not initial:
        raise FedpeftError("a compressed payload needs the run's initial adapter; none given.")
    return decode_update(payload, initial)[0]


def reply_meta(update: ClientUpdate, instruction: TrainInstruction) -> dict[str, object]:
    """The metadata that binds a reply to ``instruction``."""
    return {
        META_CLIENT_ID: update.client_id,
        META_ROUND: instruction.round,
        META_NONCE: instruction.nonce,
        META_NUM_EXAMPLES: update.num_examples,
        META_METRICS: update.metrics,
    }


def encode_reply(update: ClientUpdate, instruction: TrainInstruction) -> bytes:
    """The reply's bytes: the adapter and its extras, with ``reply_meta``."""
    return encode(update.state | update.extras, reply_meta(update, instruction))


def compressed_reply(
    update: ClientUpdate, served: AdapterState, ins: TrainInstruction, state: ClientState
) -> FitResult:
    """``Q(θ_c − θ_served + e_c)`` as the reply; the new residual ``e_c`` is kept (issue 15:
    error feedback, the residual is client state that survives resume)."""
    scheme = CompressionScheme.from_json(ins.compression)
    residual = {k[len(RESIDUAL) :]: v for k, v in state.items() if k.startswith(RESIDUAL)}
    encoded = encode_update(
        update.state,
        served,
        scheme,
        (residual or None) if scheme.error_feedback else None,
        rounding_generator(ins.seed, ins.round, ins.client_id),
        reply_meta(update, ins),
    )
    kept = {f"{RESIDUAL}{k}": v for k, v in (encoded.residual or {}).items()}
    others = {k: v for k, v in state.items() if not k.startswith(RESIDUAL)}
    return FitResult(encoded.payload, others | kept)
