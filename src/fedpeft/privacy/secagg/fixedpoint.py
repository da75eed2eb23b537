"""Fixed-point encoding of real vectors into Z_{2^b}, where masks add up and cancel.

``q(x) = round(x · 2^f) mod 2^b``: b bits in all, f of them after the binary point. Sums
of encodings are encodings of sums as long as the true sum stays in
``[−2^(b−1), 2^(b−1))/2^f``; ``decode`` reads the result as a signed (two's-complement)
number. Each value is rounded once, so a sum of n encodings is within ``n · 2^(−f−1)``
of the real sum. ``capacity(n)`` is the largest magnitude n clients may each send without
the sum wrapping; ``encode`` clamps to it and counts how many entries it had to clamp.

Also here: an ``AdapterState`` (with a weight) as one flat vector, in sorted key order, and
back — the only thing secure aggregation sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.types import AdapterState


@dataclass(frozen=True)
class FixedPoint:
    bits: int = 64
    frac_bits: int = 32

    def __post_init__(self) -> None:
        if self.bits not in (32, 64) or not 0 <= self.frac_bits < self.bits - 1:
            raise ValueError(
                f"fixed point needs bits in (32, 64) and 0 ≤ frac_bits < bits − 1, "
                f"got bits={self.bits}, frac_bits={self.frac_bits}"
            )

    @property
    def modulus_mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    @property
    def dtype(self) -> str:
        return "<u8" if self.bits == 64 else "<u4"

    def capacity(self, clients: int) -> float:
        """Largest |x| each of ``clients`` may send so that their sum does not wrap."""
        return ((1 << (self.bits - 1)) - 1) / (1 << self.frac_bits) / max(clients, 1)

    def encode(self, x: np.ndarray, clients: int) -> tuple[np.ndarray, int]:
        """(``q(x)`` as uint64 in [0, 2^b), how many entries were clamped to capacity)."""
        limit = self.capacity(clients)
        clamped = int(np.count_nonzero(np.abs(x) > limit))
        scaled = np.rint(np.clip(x.astype(np.float64), -limit, limit) * (1 << self.frac_bits))
        return scaled.astype(np.int64).view(np.uint64) & self.modulus_mask, clamped

    def decode(self, q: np.ndarray) -> np.ndarray:
        """The signed real value of sums of encodings (float64)."""
        q = q.astype(np.uint64) & self.modulus_mask
        if self.bits == 64:
            signed = q.view(np.int64)  # two's complement
        else:
            signed = q.astype(np.int64)
            signed[signed >= 1 << (self.bits - 1)] -= 1 << self.bits
        return signed.astype(np.float64) / (1 << self.frac_bits)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a + b) & self.modulus_mask  # uint64 addition wraps mod 2^64

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) & self.modulus_mask

    def to_bytes(self, q: np.ndarray) -> bytes:
        return q.astype(self.dtype).tobytes()

    def from_bytes(self, data: bytes, length: int) -> np.ndarray:
        width = self.bits // 8
        if len(data) != width * length:
            raise ValueError(f"a masked vector is {width * length} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=self.dtype).astype(np.uint64)

    def rounding_error(self, clients: int) -> float:
        """Largest distance between the decoded sum and the real sum of ``clients`` vectors."""
        return clients * math.ldexp(0.5, -self.frac_bits)


def state_vector(state: AdapterState, weight: float = 1.0) -> np.ndarray:
    """``[w · θ (sorted keys, flattened), w]`` in float64: a weighted sum of these vectors
    carries ``Σ w_c θ_c`` and ``Σ w_c`` together."""
    parts = [state[k].detach().to(torch.float64).reshape(-1).numpy() for k in sorted(state)]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return np.concatenate([weight * flat, [weight]])


def vector_length(template: AdapterState) -> int:
    return sum(t.numel() for t in template.values()) + 1


def state_from_vector(vector: np.ndarray, template: AdapterState) -> tuple[AdapterState, float]:
    """(the state part of ``vector`` shaped like ``template``, in its dtypes; the weight)."""
    if len(vector) != vector_length(template):
        raise ValueError(f"vector of {len(vector)} values for a state of {vector_length(template)}")
    out: AdapterState = {}
    start = 0
    for k in sorted(template):
        t = template[k]
        out[k] = (
            torch.from_numpy(vector[start : start + t.numel()].copy()).reshape(t.shape).to(t.dtype)
        )
        start += t.numel()
    return out, float(vector[-1])
