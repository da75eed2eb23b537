"""The wire codec: an ``AdapterState`` plus string metadata ⇄ safetensors bytes.

safetensors is a flat header + raw buffers, so decoding untrusted bytes cannot run code
(unlike pickle). Every payload up and down goes through here, and ``len(payload)`` is
the byte count recorded for it.
"""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedpeft.types import AdapterState

META_KEY = "fedpeft"


class CodecError(ValueError):
    """Bytes that are not a valid fedpeft payload."""


def encode(state: AdapterState, meta: dict[str, object] | None = None) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta or {}, sort_keys=True)})


def decode(payload: bytes) -> tuple[AdapterState, dict[str, object]]:
    """The state and metadata in ``payload``; raises ``CodecError`` on anything malformed."""
    if not isinstance(payload, bytes | bytearray) or len(payload) < 8:
        raise CodecError("payload is empty or not bytes")
    try:
        state = st_load(bytes(payload))
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError, OverflowError) as e:
        raise CodecError(f"payload is not valid safetensors ({e})") from None
    if not isinstance(meta, dict):
        raise CodecError("payload metadata is not a JSON object")
    return state, meta
