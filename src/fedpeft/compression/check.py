"""Checks on a compressed message from an untrusted sender, before anything is unpacked.

In order: the header's size and JSON; the scheme named in the metadata (format, bits,
rounding, group size, top-k, 16-bit format) and the layout fingerprint; the tensor names,
dtypes and lengths the scheme implies; the payload's exact size; then, once safetensors
has read the buffers, scales finite and positive, values finite, positions in range and
strictly increasing, and the spare bits of the last code byte zero. Every failure raises
``CodecError`` with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from fedpeft.compression.codec import META_KEY, CodecError
from fedpeft.compression.packed import padding_is_zero
from fedpeft.compression.plan import CODES, INDICES, SCALES, VALUES, Plan
from fedpeft.compression.scheme import BITS, CompressionScheme, DeltaLayout, fingerprint
from fedpeft.errors import FedpeftError
from fedpeft.types import AdapterState

FORMAT = "fedpeft.delta/1"
META_COMPRESSION = "compression"  # the metadata entry that names the scheme
MAX_HEADER_BYTES = 64 * 1024  # a compressed message's header: 4 tensors and the metadata
ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
}


def wire_meta(scheme: CompressionScheme, layout: DeltaLayout) -> dict[str, object]:
    """The metadata that names a message's scheme and the layout it was made for."""
    group = "row" if scheme.group_size is None else scheme.group_size
    return {
        "format": FORMAT,
        "bits": scheme.bits,
        "rounding": scheme.rounding,
        "group_size": group,
        "topk": None if scheme.topk is None else float(scheme.topk),
        "half": scheme.half,
        "layout": fingerprint(layout),
    }


def read_header(payload: bytes) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors payload, without reading its tensors."""
    if not isinstance(payload, bytes | bytearray) or len(payload) < 8:
        raise CodecError("payload is empty or not bytes")
    size = int.from_bytes(payload[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(payload):
        raise CodecError(f"payload header claims {size} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(payload[8 : 8 + size]))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CodecError(f"payload header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CodecError("payload header is not a JSON object")
    return size, header


def read_scheme(header: dict[str, Any], layout: DeltaLayout) -> CompressionScheme:
    """The scheme the metadata names, checked field by field and against ``layout``."""
    try:
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
    except (AttributeError, TypeError, ValueError, RecursionError):
        raise CodecError("payload metadata is not JSON") from None
    wire = meta.get(META_COMPRESSION) if isinstance(meta, dict) else None
    if not isinstance(wire, dict):
        raise CodecError("payload is not a compressed delta (no compression metadata)")
    if wire.get("format") != FORMAT:
        raise CodecError(f"unknown compression format {wire.get('format')!r}, need {FORMAT!r}")
    bits = wire.get("bits")
    if type(bits) is not int or bits not in BITS:
        raise CodecError(f"bit width {bits!r} is not one of {BITS}")
    group = wire.get("group_size")
    topk = wire.get("topk")
    if not (group == "row" or type(group) is int) or not (topk is None or type(topk) is float):
        raise CodecError(f"group size {group!r} or top-k {topk!r} has the wrong type")
    try:
        scheme = CompressionScheme(
            bits,
            wire.get("rounding"),  # type: ignore[arg-type]  # checked by CompressionScheme
            None if group == "row" else group,
            topk,
            False,
            wire.get("half"),  # type: ignore[arg-type]
        )
    except FedpeftError as e:
        raise CodecError(f"invalid compression scheme: {e}") from None
    if wire.get("layout") != fingerprint(layout):
        raise CodecError("message was made for another adapter layout (keys or shapes differ)")
    return scheme


def check_entries(header: dict[str, Any], plan: Plan, payload_size: int, header_size: int) -> None:
    """The header lists exactly the tensors ``plan`` needs, and the payload has their bytes."""
    wire = plan.wire()
    names = set(header) - {"__metadata__"}
    if names != set(wire):
        raise CodecError(f"message holds tensors {sorted(names)}, the scheme needs {sorted(wire)}")
    for name, (dtype, length) in wire.items():
        entry = header[name]
        if not isinstance(entry, dict):
            raise CodecError(f"header entry {name!r} is not an object")
        if entry.get("dtype") != ST_DTYPES[dtype] or entry.get("shape") != [length]:
            raise CodecError(
                f"tensor {name!r} is {entry.get('dtype')} {entry.get('shape')}, "
                f"the scheme needs {ST_DTYPES[dtype]} [{length}]"
            )
    need = 8 + header_size + plan.data_bytes()
    if payload_size != need:
        raise CodecError(f"payload is {payload_size} bytes, the scheme needs exactly {need}")


def check_contents(tensors: AdapterState, plan: Plan) -> None:
    """Scales finite and > 0, values finite, positions valid, code padding zero."""
    if SCALES in tensors:
        scales = tensors[SCALES].float()
        if not (torch.isfinite(scales).all() and (scales > 0).all()):
            raise CodecError("a quantisation scale is NaN, infinite, zero or negative")
        if not padding_is_zero(tensors[CODES], plan.scheme.bits, plan.kept):
            raise CodecError("the spare bits after the last code are not zero")
    if VALUES in tensors and not torch.isfinite(tensors[VALUES].float()).all():
        raise CodecError("a value is NaN or infinite")
    if INDICES in tensors:
        _check_positions(tensors[INDICES].long(), plan)


def _check_positions(positions: torch.Tensor, plan: Plan) -> None:
    start = 0
    for seg in plan.segments:
        part = positions[start : start + seg.kept]
        start += seg.kept
        if part.numel() and (int(part.min()) < 0 or int(part.max()) >= seg.numel):
            raise CodecError(f"a position of tensor {seg.key!r} is outside [0, {seg.numel})")
        if part.numel() > 1 and not bool((part[1:] > part[:-1]).all()):
            raise CodecError(f"positions of tensor {seg.key!r} are not strictly increasing")
