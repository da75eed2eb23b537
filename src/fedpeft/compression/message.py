"""Compressed deltas on the wire: the entry pair each side of a round calls.

Sender: ``encode_update(state, reference, scheme, residual, generator, meta)`` — the delta
``state − reference`` (plus the sender's error-feedback residual) compressed into one
safetensors payload whose metadata names the scheme. Receiver:
``decode_update(payload, reference)`` — validated (``check.py``) before anything is
unpacked, then ``reference + Δ̂``. ``len(payload)`` is the byte count, and
``message_bytes`` predicts it exactly from the layout and the scheme.

The packed tensors and the metadata are an ordinary fedpeft payload, so every runtime
carries them unchanged (Flower: one ``Array`` each in the ``ArrayRecord``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.compression.check import (
    META_COMPRESSION,
    check_contents,
    check_entries,
    read_header,
    read_scheme,
    wire_meta,
)
from fedpeft.compression.codec import Layout, decode, encode
from fedpeft.compression.feedback import Compressor, add_residual, error_feedback
from fedpeft.compression.packed import pack, unpack
from fedpeft.compression.plan import CODES, INDICES, SCALES, VALUES, Plan, make_plan
from fedpeft.compression.quantize import dequantize, quantize, to_half
from fedpeft.compression.scheme import CompressionScheme, DeltaLayout, layout_of
from fedpeft.compression.sparsify import scatter, top_k
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

Wire = dict[str, torch.Tensor]  # the message's packed tensors (plan.py)


@dataclass(frozen=True)
class Encoded:
    """One compressed message: its bytes, the sender's new residual ``e_t`` (``None``
    without error feedback) and ``Δ̂``, exactly what the receiver will decode."""

    payload: bytes
    residual: AdapterState | None
    decoded: AdapterState


def compress(delta: AdapterState, plan: Plan, generator: torch.Generator | None) -> Wire:
    """The message tensors of a float32 ``delta`` laid out as ``plan`` says."""
    scheme = plan.scheme
    values, positions, codes, scales = [], [], [], []
    for seg in plan.segments:
        x = delta[seg.key].reshape(-1)
        if scheme.topk is not None:
            where, x = top_k(x, seg.kept)
            positions.append(where)
        if scheme.bits == 32:
            values.append(x)
        elif scheme.bits == 16:
            values.append(to_half(x, scheme.half, scheme.rounding, generator))
        else:
            c, s = quantize(x, seg.group, scheme.bits, scheme.rounding, generator)
            codes.append(c)
            scales.append(s)
    wire: Wire = {}
    if scheme.bits >= 16:
        wire[VALUES] = torch.cat(values)
    else:
        wire[CODES] = pack(torch.cat(codes), scheme.bits)
        wire[SCALES] = torch.cat(scales)
    if scheme.topk is not None:
        wire[INDICES] = torch.cat(positions).to(plan.index_dtype)
    return wire


def decompress(wire: Wire, plan: Plan) -> AdapterState:
    """``Δ̂`` (float32, the layout's shapes) from checked message tensors."""
    bits = plan.scheme.bits
    flat = wire[VALUES].float() if bits >= 16 else unpack(wire[CODES], bits, plan.kept)
    out: AdapterState = {}
    start = group_start = 0
    for seg in plan.segments:
        part = flat[start : start + seg.kept]
        if bits < 16:
            scales = wire[SCALES][group_start : group_start + seg.groups]
            part = dequantize(part, scales, seg.group, bits)
            group_start += seg.groups
        if plan.scheme.topk is not None:
            part = scatter(seg.numel, wire[INDICES][start : start + seg.kept], part)
        out[seg.key] = part.reshape(seg.shape)
        start += seg.kept
    return out


def rounding_generator(seed: int, rnd: int, client_id: int) -> torch.Generator:
    """A generator for one message's stochastic rounding, seeded from the run's seed, the
    round and the sender (-1: the server), so reruns send the same bytes."""
    state = np.random.SeedSequence([seed, rnd, client_id + 1]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _checked_delta(delta: AdapterState) -> None:
    if not delta:
        raise FedpeftError("the delta holds no tensors; there is nothing to send.")
    for key, t in delta.items():
        if not t.is_floating_point():
            raise FedpeftError(f"tensor {key!r} is {t.dtype}; only float deltas are compressed.")
        if not torch.isfinite(t).all():
            raise FedpeftError(f"delta tensor {key!r} holds NaN or Inf and cannot be sent.")


def encode_delta(
    delta: AdapterState,
    scheme: CompressionScheme,
    residual: AdapterState | None = None,
    generator: torch.Generator | None = None,
    meta: Mapping[str, object] | None = None,
) -> Encoded:
    """``m = C(Δ + e)`` as payload bytes with ``meta`` (plus the scheme) in the metadata.
    Stochastic rounding draws from ``generator`` (required then); without error feedback
    ``residual`` is ignored and none is returned."""
    if scheme.random and generator is None:
        raise FedpeftError("stochastic rounding needs a seeded torch.Generator; pass one.")
    if meta is not None and META_COMPRESSION in meta:
        raise ValueError(f"metadata key {META_COMPRESSION!r} is reserved for the scheme")
    _checked_delta(delta)
    layout = layout_of(delta)
    plan = make_plan(layout, scheme)

    def run(corrected: AdapterState) -> tuple[tuple[Wire, AdapterState], AdapterState]:
        wire = compress(corrected, plan, generator)
        decoded = decompress(wire, plan)
        return (wire, decoded), decoded

    step: Compressor[tuple[Wire, AdapterState]] = run
    if scheme.error_feedback:
        (wire, decoded), new_residual = error_feedback(delta, residual, step)
    else:
        (wire, decoded), _ = step(add_residual(delta, None))
        new_residual = None
    payload = encode(wire, {**(meta or {}), META_COMPRESSION: wire_meta(scheme, layout)})
    return Encoded(payload, new_residual, decoded)


def decode_delta(payload: bytes, layout: DeltaLayout) -> tuple[AdapterState, dict[str, object]]:
    """``(Δ̂, metadata)`` of a message made for ``layout``; ``CodecError`` (with the reason)
    on anything malformed, raised before any value is unpacked."""
    header_size, header = read_header(payload)
    scheme = read_scheme(header, layout)
    plan = make_plan(layout, scheme)
    check_entries(header, plan, len(payload), header_size)
    wire, meta = decode(payload)
    check_contents(wire, plan)
    meta.pop(META_COMPRESSION, None)
    return decompress(wire, plan), meta


def encode_update(
    state: AdapterState,
    reference: AdapterState,
    scheme: CompressionScheme,
    residual: AdapterState | None = None,
    generator: torch.Generator | None = None,
    meta: Mapping[str, object] | None = None,
) -> Encoded:
    """``encode_delta(state − reference, …)``: ``reference`` is what the receiver holds
    (the state the server served; for the down direction, the clients' copy)."""
    if state.keys() != reference.keys():
        odd = sorted(state.keys() ^ reference.keys())[0]
        raise ValueError(f"state and reference differ in tensor {odd!r}")
    delta = {
        k: v.detach().cpu().float() - reference[k].detach().cpu().float() for k, v in state.items()
    }
    return encode_delta(delta, scheme, residual, generator, meta)


def decode_update(
    payload: bytes, reference: AdapterState
) -> tuple[AdapterState, dict[str, object]]:
    """``(reference + Δ̂, metadata)``, each tensor in its reference's dtype."""
    delta, meta = decode_delta(payload, layout_of(reference))
    state = {k: (ref.cpu().float() + delta[k]).to(ref.dtype) for k, ref in reference.items()}
    return state, meta


def message_bytes(
    layout: DeltaLayout, scheme: CompressionScheme, meta: Mapping[str, object] | None = None
) -> int:
    """Exactly ``len(payload)`` of every message for ``layout``, ``scheme`` and ``meta``:
    8 + the safetensors header (which depends only on the tensors' dtypes and lengths and
    on the metadata) + ``Plan.data_bytes``."""
    plan = make_plan(layout, scheme)
    zeros = {name: torch.zeros(n, dtype=dtype) for name, (dtype, n) in plan.wire().items()}
    full = {**(meta or {}), META_COMPRESSION: wire_meta(scheme, layout)}
    return len(encode(zeros, full))


def reply_layout(served: Layout, scheme: CompressionScheme | None) -> Layout:
    """The tensors a reply to a payload holding ``served`` must carry: the same tensors, or,
    compressed with ``scheme``, the message's packed ones (what a transport checks before
    decoding anything)."""
    if scheme is None or scheme.identity:
        return served
    delta_layout = tuple((key, tuple(shape)) for key, (_, shape) in sorted(served.items()))
    wire = make_plan(delta_layout, scheme).wire()
    return {name: (dtype, (length,)) for name, (dtype, length) in wire.items()}
