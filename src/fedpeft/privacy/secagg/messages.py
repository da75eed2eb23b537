"""The messages of one secure-aggregation round: typed dataclasses of ints and bytes.

Four round trips (Bonawitz et al., 2017; Bell et al., 2020 for the neighbour graph)::

    server → client        client → server
    Setup                  PublicKeys        advertise two X25519 public keys
    KeyBook                EncryptedShares   Shamir shares of (mask seed, mask key), sealed
    ForwardedShares        MaskedInput       the input plus masks, mod 2^b
    UnmaskRequest          UnmaskShares      per neighbour: seed share (alive) or key share
                                             (dropped), never both

``encode``/``decode`` give each message a byte form any transport can carry: a 4-byte
magic, a JSON header (type, integer fields, blob sizes) and the raw blobs. Decoding checks
every field against the dataclass's annotation and runs no code (no pickle).
"""

from __future__ import annotations

import json
import struct
import typing
from dataclasses import dataclass, fields
from typing import Any

_MAGIC = b"FSA1"


@dataclass(frozen=True)
class Setup:
    round: int
    client_id: int
    neighbours: tuple[int, ...]
    threshold: int
    vector_length: int
    bits: int
    frac_bits: int
    clients: int  # cohort size: the fixed-point capacity is shared among this many


@dataclass(frozen=True)
class PublicKeys:
    client_id: int
    channel_key: bytes  # c_u^PK: encrypts the shares sent to u
    mask_key: bytes  # s_u^PK: pairwise masks with u


@dataclass(frozen=True)
class KeyBook:
    client_id: int
    channel_keys: dict[int, bytes]  # neighbour → c_v^PK (only neighbours that advertised)
    mask_keys: dict[int, bytes]  # neighbour → s_v^PK


@dataclass(frozen=True)
class EncryptedShares:
    client_id: int
    ciphertexts: dict[int, bytes]  # neighbour → its sealed shares of (b_u, s_u^SK)


@dataclass(frozen=True)
class ForwardedShares:
    client_id: int
    ciphertexts: dict[int, bytes]  # source neighbour → the shares it sealed for this client


@dataclass(frozen=True)
class MaskedInput:
    client_id: int
    vector: bytes  # y_u as little-endian unsigned integers of ``bits`` bits
    clamped: int  # entries the client had to clamp to the fixed-point capacity


@dataclass(frozen=True)
class UnmaskRequest:
    client_id: int
    survivors: tuple[int, ...]  # neighbours (and itself) whose masked input arrived
    dropped: tuple[int, ...]  # neighbours that shared keys but sent no masked input


@dataclass(frozen=True)
class UnmaskShares:
    client_id: int
    seed_shares: dict[int, bytes]  # survivor → this client's share of its b_u
    key_shares: dict[int, bytes]  # dropped → this client's share of its s_u^SK


@dataclass(frozen=True)
class ClientMemory:
    """What a client keeps between the stages of one round (never sent): its setup, key
    book, private keys, self-mask seed and the shares it holds for its neighbours. A
    runtime that runs a client's stages in different processes carries these bytes on the
    client's side (``client/secagg.py``)."""

    setup: bytes  # the encoded Setup
    keybook: bytes  # the encoded KeyBook (empty before share_keys)
    channel_sk: bytes
    mask_sk: bytes
    seed: bytes  # b_u (empty before share_keys)
    held_seeds: dict[int, bytes]  # owner → its share of b_owner
    held_keys: dict[int, bytes]  # owner → its share of s_owner^SK
    masked: int  # 1 once the masked input was sent (a second one would reveal a difference)
    answered: int  # 1 once the unmask stage was answered


Message = (
    Setup
    | PublicKeys
    | KeyBook
    | EncryptedShares
    | ForwardedShares
    | MaskedInput
    | UnmaskRequest
    | UnmaskShares
    | ClientMemory
)
_TYPES: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        Setup,
        PublicKeys,
        KeyBook,
        EncryptedShares,
        ForwardedShares,
        MaskedInput,
        UnmaskRequest,
        UnmaskShares,
        ClientMemory,
    )
}


class MessageError(Exception):
    """Bytes that are not a well-formed secure-aggregation message."""


def encode(msg: Message) -> bytes:
    blobs: list[bytes] = []

    def blob(b: bytes) -> int:
        blobs.append(b)
        return len(blobs) - 1

    header: dict[str, Any] = {"type": type(msg).__name__}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, bytes):
            header[f.name] = {"blob": blob(value)}
        elif isinstance(value, dict):
            header[f.name] = {str(k): blob(v) for k, v in sorted(value.items())}
        elif isinstance(value, tuple):
            header[f.name] = list(value)
        else:
            header[f.name] = value
    header["sizes"] = [len(b) for b in blobs]
    text = json.dumps(header, separators=(",", ":")).encode()
    return _MAGIC + struct.pack("<I", len(text)) + text + b"".join(blobs)


def decode(data: bytes, expected: type[Any] | None = None) -> Any:
    """The message in ``data`` (of type ``expected`` if given); ``MessageError`` otherwise."""
    try:
        if data[:4] != _MAGIC:
            raise ValueError("bad magic")
        (n,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8 : 8 + n])
        cls = _TYPES[header["type"]]
        sizes = header["sizes"]
        if not (isinstance(sizes, list) and all(_is_int(s) and s >= 0 for s in sizes)):
            raise ValueError("bad blob sizes")
        if 8 + n + sum(sizes) != len(data):
            raise ValueError("length mismatch")
        offsets, pos = [], 8 + n
        for s in sizes:
            offsets.append(data[pos : pos + s])
            pos += s
        hints = typing.get_type_hints(cls)
        values = {f.name: _field(header[f.name], hints[f.name], offsets) for f in fields(cls)}
    except (ValueError, KeyError, TypeError, IndexError, RecursionError, struct.error) as e:
        raise MessageError(f"malformed secure-aggregation message: {e}") from None
    if expected is not None and cls is not expected:
        raise MessageError(f"expected a {expected.__name__}, got a {cls.__name__}")
    return cls(**values)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _field(raw: Any, hint: Any, blobs: list[bytes]) -> Any:
    if hint is int:
        if not _is_int(raw):
            raise ValueError(f"expected an integer, got {raw!r}")
        return raw
    if hint is bytes:
        return blobs[_index(raw["blob"])]
    if typing.get_origin(hint) is tuple:
        if not (isinstance(raw, list) and all(_is_int(x) for x in raw)):
            raise ValueError("expected a list of integers")
        return tuple(raw)
    if typing.get_origin(hint) is dict:
        if not isinstance(raw, dict):
            raise ValueError("expected an object")
        return {int(k): blobs[_index(v)] for k, v in raw.items()}
    raise TypeError(f"unsupported field type {hint}")  # pragma: no cover - a coding error


def _index(i: object) -> int:
    if not (isinstance(i, int) and not isinstance(i, bool) and i >= 0):
        raise ValueError(f"bad blob index {i!r}")
    return i
