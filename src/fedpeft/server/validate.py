"""Checks on a client's reply before it can touch the global state.

A reply is rejected — with a reason that is logged and recorded — when it does not
decode, carries other keys, shapes or dtypes than the global adapter, holds NaN/Inf,
claims a non-positive example count, or answers for another client or round.
"""

from __future__ import annotations

import math

import torch

from fedpeft.client import META_CLIENT_ID, META_METRICS, META_NUM_EXAMPLES, META_ROUND
from fedpeft.compression import CodecError, decode
from fedpeft.types import AdapterState, ClientUpdate, TrainInstruction


class RejectedUpdate(Exception):
    """A client reply that must not be aggregated; the message is the reason."""


def validate_reply(
    payload: bytes, reference: AdapterState, instruction: TrainInstruction
) -> ClientUpdate:
    try:
        state, meta = decode(payload)
    except CodecError as e:
        raise RejectedUpdate(str(e)) from None
    if (
        meta.get(META_CLIENT_ID) != instruction.client_id
        or meta.get(META_ROUND) != instruction.round
    ):
        raise RejectedUpdate(
            f"reply is for client {meta.get(META_CLIENT_ID)!r}, round {meta.get(META_ROUND)!r}"
        )
    n = meta.get(META_NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise RejectedUpdate(f"num_examples must be a positive integer, got {n!r}")
    check_tensors(state, reference)
    raw_metrics = meta.get(META_METRICS, {})
    metrics = {
        str(k): float(v)
        for k, v in (raw_metrics.items() if isinstance(raw_metrics, dict) else [])
        if isinstance(v, int | float) and math.isfinite(v)
    }
    return ClientUpdate(instruction.client_id, state, n, metrics)


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
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise RejectedUpdate(f"tensor {key!r} holds NaN or Inf")
