"""The client's half of secure aggregation (SecAgg+): a state machine, one call per stage.

Client u holds two X25519 key pairs (c_u: the channel for its shares, s_u: its pairwise
masks) and a fresh 32-byte self-mask seed b_u. Its masked input is (Bonawitz et al., 2017,
§4; Bell et al., 2020 restrict the pairs to a neighbour graph)::

    y_u = q(x_u) + PRG(b_u) + Σ_{v ∈ N(u), u < v} PRG(s_uv) − Σ_{v ∈ N(u), u > v} PRG(s_uv)
          (mod 2^b),   s_uv = KA(s_u^SK, s_v^PK) = KA(s_v^SK, s_u^PK)

so the pairwise masks cancel in Σ_u y_u. b_u and s_u^SK are Shamir-shared (threshold t)
among u's neighbours: for a survivor the server collects b_u's shares and removes PRG(b_u);
for a client that dropped after sharing, it collects s_u^SK's shares and removes the masks
it had with survivors. A client answers the unmask stage once, with at most one kind of
share per neighbour, so the server never learns both secrets of the same client.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from fedpeft.privacy.secagg import shamir
from fedpeft.privacy.secagg.crypto import (
    KEY_BYTES,
    DecryptionError,
    RandomBytes,
    agree,
    decrypt,
    encrypt,
    new_private_key,
    prg,
    public_key,
)
from fedpeft.privacy.secagg.fixedpoint import FixedPoint
from fedpeft.privacy.secagg.messages import (
    ClientMemory,
    EncryptedShares,
    ForwardedShares,
    KeyBook,
    MaskedInput,
    MessageError,
    PublicKeys,
    Setup,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)


class ProtocolError(Exception):
    """A peer (the server) broke the protocol; the client stops answering this round."""


def label(kind: bytes, rnd: int) -> bytes:
    """The HKDF label of a key: its purpose and the round (keys never serve twice)."""
    return b"fedpeft/secagg/" + kind + struct.pack("<Q", rnd)


def share_aad(rnd: int, owner: int, holder: int) -> bytes:
    return struct.pack("<QII", rnd, owner, holder)


def mask_sign(u: int, v: int) -> int:
    """+1 when u adds PRG(s_uv), −1 when it subtracts it."""
    return 1 if u < v else -1


class SecAggClient:
    def __init__(self, client_id: int, randbytes: RandomBytes = os.urandom) -> None:
        self.id = client_id
        self._rand = randbytes
        self._setup: Setup | None = None
        self._keybook: KeyBook | None = None
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner → (share of b, share of sk)
        self._answered = False
        self._seed = b""  # b_u, drawn when the key book arrives
        self._masked = False

    def on_setup(self, msg: Setup) -> PublicKeys:
        _expect(msg.client_id == self.id, "setup addressed to another client")
        _expect(self.id not in msg.neighbours, "a client cannot be its own neighbour")
        _expect(1 <= msg.threshold <= len(msg.neighbours), "threshold out of range")
        self._setup, self._fixed = msg, FixedPoint(msg.bits, msg.frac_bits)
        self._c_sk, self._s_sk = new_private_key(self._rand), new_private_key(self._rand)
        return PublicKeys(self.id, public_key(self._c_sk), public_key(self._s_sk))

    def on_keybook(self, msg: KeyBook) -> EncryptedShares:
        setup = self._need_setup()
        peers = set(msg.channel_keys)
        _expect(msg.client_id == self.id, "key book addressed to another client")
        _expect(peers == set(msg.mask_keys), "key book lists different peers per key kind")
        _expect(peers <= set(setup.neighbours), "key book names a client that is no neighbour")
        _expect(len(peers) >= setup.threshold, "fewer neighbours left than the threshold")
        keys = [*msg.channel_keys.values(), *msg.mask_keys.values()]
        _expect(all(len(k) == KEY_BYTES for k in keys), "a public key has the wrong length")
        self._keybook = msg
        self._seed = self._rand(shamir.SECRET_BYTES)
        order = sorted(peers)
        xs = [v + 1 for v in order]
        seed_shares = shamir.split(self._seed, xs, setup.threshold, self._rand)
        key_shares = shamir.split(self._s_sk, xs, setup.threshold, self._rand)
        out: dict[int, bytes] = {}
        for v, b_share, sk_share in zip(order, seed_shares, key_shares, strict=True):
            key = agree(self._c_sk, msg.channel_keys[v], label(b"channel", setup.round))
            plain = struct.pack("<II", self.id, v) + b_share + sk_share
            out[v] = encrypt(key, plain, share_aad(setup.round, self.id, v), self._rand)
        return EncryptedShares(self.id, out)

    def on_forwarded(self, msg: ForwardedShares, values: np.ndarray) -> MaskedInput:
        """Stores the shares meant for it and masks ``values`` (float64, the vector length)."""
        setup, book = self._need_setup(), self._need_keybook()
        _expect(msg.client_id == self.id, "shares addressed to another client")
        _expect(set(msg.ciphertexts) <= set(book.channel_keys), "shares from a non-neighbour")
        _expect(len(msg.ciphertexts) >= setup.threshold, "fewer neighbours left than threshold")
        _expect(len(values) == setup.vector_length, "input of the wrong length")
        _expect(not self._masked, "a second masked input in one round")
        for u, ct in msg.ciphertexts.items():
            key = agree(self._c_sk, book.channel_keys[u], label(b"channel", setup.round))
            try:
                plain = decrypt(key, ct, share_aad(setup.round, u, self.id))
            except DecryptionError as e:
                raise ProtocolError(f"shares from client {u}: {e}") from None
            _expect(plain[:8] == struct.pack("<II", u, self.id), "shares for another pair")
            b_share, sk_share = plain[8 : 8 + shamir.SHARE_BYTES], plain[8 + shamir.SHARE_BYTES :]
            self._held[u] = (b_share, sk_share)
        fixed = self._fixed
        y, clamped = fixed.encode(values, setup.clients)
        y = fixed.add(y, prg(self._seed, setup.vector_length, fixed.bits))
        for v in sorted(msg.ciphertexts):
            seed = agree(self._s_sk, book.mask_keys[v], label(b"mask", setup.round))
            mask = prg(seed, setup.vector_length, fixed.bits)
            y = fixed.add(y, mask) if mask_sign(self.id, v) > 0 else fixed.sub(y, mask)
        self._masked = True
        return MaskedInput(self.id, fixed.to_bytes(y), clamped)

    def on_unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        setup = self._need_setup()
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        _expect(msg.client_id == self.id, "unmask request addressed to another client")
        _expect(not self._answered, "a second unmask request in one round")
        _expect(not survivors & dropped, "a client listed as both alive and dropped")
        _expect(self.id in survivors, "this client is listed as dropped")
        _expect((survivors - {self.id}) | dropped <= set(self._held), "unknown clients listed")
        _expect(len(survivors) >= setup.threshold, "fewer survivors than the threshold")
        self._answered = True
        return UnmaskShares(
            self.id,
            {u: self._held[u][0] for u in sorted(survivors - {self.id})},
            {d: self._held[d][1] for d in sorted(dropped)},
        )

    def memory(self) -> ClientMemory:
        """Everything this client must keep until its next stage (secrets included)."""
        setup = self._need_setup()
        return ClientMemory(
            encode(setup),
            encode(self._keybook) if self._keybook is not None else b"",
            self._c_sk,
            self._s_sk,
            self._seed,
            {u: b for u, (b, _) in sorted(self._held.items())},
            {u: k for u, (_, k) in sorted(self._held.items())},
            int(self._masked),
            int(self._answered),
        )

    @classmethod
    def restore(cls, memory: ClientMemory, randbytes: RandomBytes = os.urandom) -> SecAggClient:
        """The client as ``memory()`` left it; ``ProtocolError`` if the memory is damaged."""
        try:
            setup = decode(memory.setup, Setup)
            keybook = decode(memory.keybook, KeyBook) if memory.keybook else None
        except MessageError as e:
            raise ProtocolError(f"the client's kept secure-aggregation state: {e}") from None
        ok = len(memory.channel_sk) == len(memory.mask_sk) == KEY_BYTES
        _expect(ok and memory.held_seeds.keys() == memory.held_keys.keys(), "damaged memory")
        client = cls(setup.client_id, randbytes)
        client._setup, client._fixed = setup, FixedPoint(setup.bits, setup.frac_bits)
        client._c_sk, client._s_sk = memory.channel_sk, memory.mask_sk
        client._keybook = keybook
        client._seed = memory.seed
        client._held = {u: (memory.held_seeds[u], memory.held_keys[u]) for u in memory.held_seeds}
        client._masked, client._answered = bool(memory.masked), bool(memory.answered)
        return client

    def _need_setup(self) -> Setup:
        _expect(self._setup is not None, "a stage before setup")
        assert self._setup is not None
        return self._setup

    def _need_keybook(self) -> KeyBook:
        _expect(self._keybook is not None, "masking before the key book")
        assert self._keybook is not None
        return self._keybook


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise ProtocolError(what)
