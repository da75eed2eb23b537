"""b-bit codes packed into bytes: ``8/b`` codes a byte, the first in the lowest bits.

Neither torch nor safetensors has sub-byte integer dtypes, so codes travel as ``uint8``:
code ``i`` sits in byte ``⌊i·b/8⌋`` at bit ``(i mod 8/b)·b``. The unused bits of the last
byte are zero, which the receiver checks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _shifts(bits: int) -> Tensor:
    return torch.arange(8 // bits, dtype=torch.int32) * bits


def pack(codes: Tensor, bits: int) -> Tensor:
    """``⌈m·b/8⌉`` bytes holding the ``m`` codes (each ``< 2^b``)."""
    if bits == 8:
        return codes.to(torch.uint8).clone()
    per = 8 // bits
    pad = (-codes.numel()) % per
    rows = torch.cat([codes, codes.new_zeros(pad)]).view(-1, per).to(torch.int32)
    return (rows << _shifts(bits)).sum(dim=1).to(torch.uint8)


def unpack(packed: Tensor, bits: int, count: int) -> Tensor:
    """The first ``count`` codes held in ``packed``."""
    if bits == 8:
        return packed[:count].clone()
    mask = 2**bits - 1
    codes = (packed.to(torch.int32)[:, None] >> _shifts(bits)) & mask
    return codes.reshape(-1)[:count].to(torch.uint8)


def padding_is_zero(packed: Tensor, bits: int, count: int) -> bool:
    """Whether the bits after the ``count``-th code are all zero (a well-formed message)."""
    used = count * bits % 8
    if used == 0 or packed.numel() == 0:
        return True
    return int(packed[-1]) >> used == 0
