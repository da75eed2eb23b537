"""The wire codec: an ``AdapterState`` plus string metadata ⇄ safetensors bytes.

safetensors is a flat header + raw buffers, so decoding untrusted bytes cannot run code
(unlike pickle). Every payload up and down goes through here, and ``len(payload)`` is
the byte count recorded for it.

Decoding checks the header before any tensor is built: its size (``MAX_HEADER_BYTES``),
the metadata's size (``MAX_META_BYTES``), every entry's dtype, shape and byte range, and —
when the caller passes ``expected`` (``layout(reference)``) — that the names, dtypes and
shapes are exactly the expected ones, so a reply with a 256 MB extra tensor is refused
after reading its few-hundred-byte header, not after copying 256 MB. (safetensors' own
``load`` validates the same header but only while building every tensor, and has no size
limits of its own below 100 MB of header.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedpeft.types import AdapterState

META_KEY = "fedpeft"
MAX_HEADER_BYTES = 16 << 20  # names, dtypes, shapes, offsets: far above any adapter's
MAX_META_BYTES = 64 << 10  # fedpeft's JSON metadata (round, client, count, metrics)

# safetensors' dtype names for the dtypes that travel, and their sizes
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items()}

Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
"""What a payload must hold: tensor name → (dtype, shape)."""


class CodecError(ValueError):
    """Bytes that are not a valid fedpeft payload."""


def encode(state: AdapterState, meta: dict[str, object] | None = None) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta or {}, sort_keys=True)})


def layout(state: AdapterState) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The ``expected`` argument of ``decode`` for payloads shaped like ``state``."""
    return {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}


def decode(
    payload: bytes, *, expected: Layout | None = None, max_bytes: int | None = None
) -> tuple[AdapterState, dict[str, object]]:
    """The state and metadata in ``payload``; raises ``CodecError`` on anything malformed,
    larger than ``max_bytes``, or (with ``expected``) other than the expected tensors —
    all decided from the header, before tensor data is touched."""
    if not isinstance(payload, bytes | bytearray) or len(payload) < 8:
        raise CodecError("payload is empty or not bytes")
    if max_bytes is not None and len(payload) > max_bytes:
        raise CodecError(f"payload is {len(payload)} bytes, above the limit of {max_bytes}")
    header = read_header(payload)
    meta = _metadata(header)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    data_bytes = len(payload) - 8 - _header_len(payload)
    for name, entry in entries.items():
        _check_entry(name, entry, data_bytes)
    if expected is not None:
        _check_expected(entries, expected)
    try:
        state = st_load(bytes(payload))
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise CodecError(f"payload is not valid safetensors ({e})") from None
    # safetensors returns its tensors in an order that follows the process's hash seed; in
    # name order, sums over a state (an update's norm) are the same in every process
    return {k: state[k] for k in sorted(state)}, meta


def payload_layout(payload: bytes | bytearray) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The names, dtypes and shapes a payload holds, from its header alone (the layout a
    reply to it must have)."""
    header = read_header(payload)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_entry(name, entry, len(payload) - 8 - _header_len(payload))
        assert isinstance(entry, dict)
        out[name] = (_DTYPES[entry["dtype"]][0], tuple(entry["shape"]))
    return out


def _header_len(payload: bytes | bytearray) -> int:
    return int.from_bytes(payload[:8], "little")


def read_header(payload: bytes | bytearray) -> dict[str, object]:
    """The safetensors JSON header, size-checked, without reading any tensor data."""
    n = _header_len(payload)
    if n > MAX_HEADER_BYTES or 8 + n > len(payload):
        raise CodecError(
            f"payload header claims {n} bytes (limit {MAX_HEADER_BYTES}, "
            f"payload {len(payload)} bytes)"
        )
    try:
        header = json.loads(bytes(payload[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CodecError(f"payload header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CodecError("payload header is not a JSON object")
    return header


def _metadata(header: dict[str, object]) -> dict[str, object]:
    raw = header.get("__metadata__", {})
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise CodecError("payload metadata is not a map of strings")
    size = sum(len(k) + len(v) for k, v in raw.items())
    if size > MAX_META_BYTES:
        raise CodecError(f"payload metadata is {size} bytes, above the limit of {MAX_META_BYTES}")
    try:
        meta = json.loads(raw.get(META_KEY, "{}"))
    except (ValueError, RecursionError) as e:
        raise CodecError(f"payload metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CodecError("payload metadata is not a JSON object")
    return meta


def _check_entry(name: str, entry: object, data_bytes: int) -> None:
    """One header entry: a known dtype, a shape of non-negative ints, and a byte range
    inside the data whose length is exactly the shape's."""
    if not isinstance(entry, dict):
        raise CodecError(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CodecError(f"tensor {name!r}: dtype {dtype!r} cannot travel")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise CodecError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
        raise CodecError(f"tensor {name!r}: data offsets {offsets!r} are invalid")
    start, end = offsets
    if not start <= end <= data_bytes or end - start != math.prod(shape) * _DTYPES[dtype][1]:
        raise CodecError(f"tensor {name!r}: its {end - start} data bytes do not fit {shape}")


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_expected(entries: dict[str, object], expected: Layout) -> None:
    missing, extra = expected.keys() - entries.keys(), entries.keys() - expected.keys()
    if missing or extra:
        some = sorted(missing or extra)[0]
        raise CodecError(f"{'missing' if missing else 'unexpected'} tensor {some!r}")
    for name, (dtype, shape) in expected.items():
        entry = entries[name]
        assert isinstance(entry, dict)  # checked by _check_entry
        if entry["dtype"] != _NAMES.get(dtype) or tuple(entry["shape"]) != tuple(shape):
            raise CodecError(
                f"tensor {name!r} is {entry['dtype']} {tuple(entry['shape'])}, "
                f"expected {_NAMES.get(dtype, dtype)} {tuple(shape)}"
            )
