"""Shamir's secret sharing (Shamir, 1979, "How to Share a Secret") over GF(p), p = 2^521 − 1.

A secret s (32 bytes, read as an integer < 2^256 < p) becomes the constant term of a random
polynomial f of degree t − 1; holder i gets (x_i, f(x_i)). Any t shares give s back by
Lagrange interpolation at 0::

    s = f(0) = Σ_j y_j · Π_{m≠j} x_m / (x_m − x_j)   (mod p)

and fewer than t reveal nothing about s. Written here because ``cryptography`` has no secret
sharing (flwr's lives in ``flwr``, which only the Flower runtime may import). A share is
4 bytes of x and 66 bytes of y, big-endian.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.privacy.secagg.crypto import RandomBytes

PRIME = (1 << 521) - 1  # a Mersenne prime
_Y_BYTES = 66
SHARE_BYTES = 4 + _Y_BYTES
SECRET_BYTES = 32


def split(secret: bytes, xs: Sequence[int], threshold: int, randbytes: RandomBytes) -> list[bytes]:
    """One share of ``secret`` for each x in ``xs`` (distinct, 1 ≤ x < 2^32); any
    ``threshold`` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}]")
    if len(set(xs)) != len(xs) or not all(0 < x < 1 << 32 for x in xs):
        raise ValueError("share points must be distinct and in [1, 2^32)")
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(randbytes(_Y_BYTES), "big") % PRIME for _ in range(threshold - 1)
    ]
    return [_pack(x, _evaluate(coefficients, x)) for x in xs]


def combine(shares: Sequence[bytes], threshold: int) -> bytes:
    """The secret from any ``threshold`` shares (the first ``threshold`` are used)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot recover a secret of threshold {threshold}")
    points = [_unpack(s) for s in shares[:threshold]]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ValueError("two shares have the same point")
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("the shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    y = 0
    for c in reversed(coefficients):  # Horner
        y = (y * x + c) % PRIME
    return y


def _pack(x: int, y: int) -> bytes:
    return x.to_bytes(4, "big") + y.to_bytes(_Y_BYTES, "big")


def _unpack(share: bytes) -> tuple[int, int]:
    if len(share) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share[4:], "big")
    if y >= PRIME:
        raise ValueError("share value out of the field")
    return int.from_bytes(share[:4], "big"), y
