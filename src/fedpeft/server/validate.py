"""Checks on a client's reply before it can touch the global state.

A reply is rejected — with a reason that is logged and recorded — when it does not
decode, carries other keys, shapes or dtypes than the global adapter, holds NaN/Inf,
claims an example count that is not a positive integer or exceeds what the client
reported having, changes a tensor the strategy keeps frozen, or answers for another
client, round or instruction (each instruction carries a fresh nonce the reply echoes).
Unparseable metrics are dropped, not trusted.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from fedpeft.aggregation.robust import clip_deltas
from fedpeft.client import (
    META_CLIENT_ID,
    META_METRICS,
    META_NONCE,
    META_NUM_EXAMPLES,
    META_ROUND,
)
from fedpeft.compression import CodecError, decode, decode_update, layout
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction


class RejectedUpdate(Exception):
    """A client reply that must not be aggregated; the message is the reason."""


def clip_update(
    update: ClientUpdate, start: AdapterState, max_norm: float | None
) -> tuple[ClientUpdate, float]:
    """Norm clipping of a validated update: ``θ_s + Δ · min(1, M / ‖Δ‖₂)`` with
    ``Δ = θ_c − θ_s`` over the whole state it was served (``server.clip_norm``; None: no
    clipping). Returns the update and ``‖Δ‖₂`` before clipping."""
    norm = delta_norm(update.state, start)
    if max_norm is None or norm <= max_norm:
        return update, norm
    ((state, _),) = clip_deltas(start, [(update.state, 1.0)], max_norm)
    return replace(update, state=state), norm


def validate_reply(
    payload: bytes,
    reference: AdapterState,
    instruction: TrainInstruction,
    max_examples: int | None = None,
    extras: AdapterState | None = None,
) -> ClientUpdate:
    """The update in ``payload``, checked against ``reference`` (the adapter the client was
    served) and ``extras`` (the ``x/…`` tensors its client half must send back)."""
    extras = extras or {}
    try:  # the header is checked against the reference before any tensor is decoded
        if instruction.compression:  # θ_served + the dequantised Δ, checked before unpacking
            tensors, meta = decode_update(payload, reference)
        else:
            tensors, meta = decode(payload, expected=layout(reference | extras))
    except CodecError as e:
        raise RejectedUpdate(str(e)) from None
    state = {k: v for k, v in tensors.items() if k not in extras}
    sent_extras = {k: v for k, v in tensors.items() if k in extras}
    check_binding(meta, instruction)
    n = meta.get(META_NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise RejectedUpdate(f"num_examples must be a positive integer, got {n!r}")
    if max_examples is not None and n > max_examples:
        raise RejectedUpdate(f"num_examples {n} exceeds the {max_examples} the client reported")
    check_tensors(state, reference)
    check_tensors(sent_extras, extras)
    _check_frozen(state, reference, instruction.freeze)
    metrics = bounded_metrics(meta.get(META_METRICS))
    return ClientUpdate(instruction.client_id, state, n, metrics, sent_extras)


def check_binding(meta: dict[str, object], instruction: TrainInstruction) -> None:
    """A reply must answer ``instruction``: its client, its round and its nonce."""
    if (
        meta.get(META_CLIENT_ID) != instruction.client_id
        or meta.get(META_ROUND) != instruction.round
    ):
        raise RejectedUpdate(
            f"reply is for client {meta.get(META_CLIENT_ID)!r}, round {meta.get(META_ROUND)!r}"
        )
    if instruction.nonce and meta.get(META_NONCE) != instruction.nonce:
        raise RejectedUpdate(
            "reply does not echo its instruction's nonce (a replayed or relabelled reply)"
        )


METRIC_LIMIT = 1e12  # |x| above this is not a loss, a time or a count: it is dropped
MAX_METRICS = 32  # a reply's metrics beyond this many (in sorted key order) are dropped
MAX_METRIC_KEY = 64  # characters


def bounded_metrics(raw: object) -> dict[str, float]:
    """Finite numeric metrics of plausible size only; anything else a client sends is
    dropped: non-numbers, NaN/Inf, ``|x| > METRIC_LIMIT`` (e.g. a train loss of 1e300 that
    would otherwise be logged and averaged), over-long keys, and keys past ``MAX_METRICS``."""
    out: dict[str, float] = {}
    items = sorted(raw.items(), key=lambda kv: str(kv[0])) if isinstance(raw, dict) else []
    for key, value in items:
        if len(out) == MAX_METRICS:
            break
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if len(str(key)) > MAX_METRIC_KEY:
            continue
        try:
            number = float(value)
        except OverflowError:
            continue
        if math.isfinite(number) and abs(number) <= METRIC_LIMIT:
            out[str(key)] = number
    return out


def _check_frozen(state: AdapterState, reference: AdapterState, freeze: tuple[str, ...]) -> None:
    """A strategy's client half (e.g. FFA-LoRA's shared A) must come back unchanged."""
    for key, ref in reference.items():
        if any(part in key for part in freeze) and not torch.equal(state[key], ref):
            raise RejectedUpdate(f"tensor {key!r} is frozen by the strategy but was changed")


def check_tensors(state: AdapterState, reference: AdapterState) -> None:
    missing = reference.keys() - state.keys()
    extra = state.keys() - reference.keys()
    if missing or extra:
        some = sorted(missing or extra)[0]
        raise RejectedUpdate(f"{'missing' if missing else 'unexpected'} tensor {some!r}")
    for key, ref in reference.items():
        t = state[key]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise RejectedUpdate(
                f"tensor {key!r} is {t.dtype} {tuple(t.shape)}, "
                f"expected {ref.dtype} {tuple(ref.shape)}"
            )
    check_finite(state)


def delta_norm(state: AdapterState, start: AdapterState) -> float:
    """``‖θ − θ_s‖₂`` over every tensor of ``state``, in name order: the per-tensor
    differences summed by torch's fused total norm (one call, not one reduction and one
    Python float per tensor: at 100 replies a round that was a fifth of the server's own
    time, BENCHMARKS issue 19)."""
    if not state:
        return 0.0
    deltas = [v.float() - start[k].float() for k, v in sorted(state.items())]
    return float(torch.nn.utils.get_total_norm(deltas, 2.0, foreach=True))


def check_finite(state: AdapterState, where: str = "") -> None:
    """Rejects a state with NaN or Inf. One sum per tensor, stacked and tested at once; a
    non-finite sum (NaN/Inf, or an overflowing sum of finite values) falls back to the
    exact per-tensor test, which names the tensor or finds none."""
    floats = [t for t in state.values() if t.is_floating_point()]
    if not floats:
        return
    sums = torch.stack([t.sum(dtype=torch.float64) for t in floats])
    if bool(torch.isfinite(sums).all()):
        return
    for key, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise RejectedUpdate(
                f"tensor {key!r}{f' of {where}' if where else ''} holds NaN or Inf"
            )
