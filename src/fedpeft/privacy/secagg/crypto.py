"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

- key agreement: X25519 (RFC 7748), the shared secret run through HKDF-SHA256 (RFC 5869)
  with a label, so one exchange never yields the same key for two purposes;
- authenticated encryption of the secret shares: ChaCha20-Poly1305 (RFC 8439), the
  sender, receiver and round bound in as associated data;
- the mask generator: the ChaCha20 keystream under a 32-byte seed, read as unsigned
  integers (a PRG: without the seed the mask is indistinguishable from uniform).

Randomness comes from a ``RandomBytes`` source: ``os.urandom`` (the OS CSPRNG) in real
use. Tests and simulations may pass a seeded one (``seeded_bytes``) to be reproducible;
keys from it are only as secret as its seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

RandomBytes = Callable[[int], bytes]
KEY_BYTES = 32
_NONCE = 12


class DecryptionError(Exception):
    """A ciphertext that fails authentication (tampered, or not meant for this key)."""


def seeded_bytes(seed: int) -> RandomBytes:
    """A reproducible byte source (SHA-256 in counter mode over the seed); tests only."""
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
            counter += 1
        return out[:n]

    return draw


def new_private_key(randbytes: RandomBytes) -> bytes:
    """32 random bytes: an X25519 private key (clamped by X25519 itself)."""
    return randbytes(KEY_BYTES)


def public_key(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, label: bytes) -> bytes:
    """``HKDF-SHA256(X25519(sk, pk_peer), info=label)``: the same 32 bytes on both sides."""
    secret = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(secret)


def encrypt(key: bytes, plaintext: bytes, aad: bytes, randbytes: RandomBytes) -> bytes:
    nonce = randbytes(_NONCE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(ciphertext) < _NONCE + 16:
        raise DecryptionError("ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], aad)
    except InvalidTag:
        raise DecryptionError("ciphertext failed authentication") from None


def prg(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` pseudo-random integers in [0, 2^bits), uint64, from a 32-byte seed."""
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    words = np.frombuffer(stream.update(b"\0" * (8 * length)), dtype="<u8").astype(np.uint64)
    return words if bits == 64 else words & np.uint64((1 << bits) - 1)
