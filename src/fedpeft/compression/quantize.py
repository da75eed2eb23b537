"""Quantisers: b-bit integer codes with one scale per group, and 16-bit floats, each with
stochastic (unbiased) or nearest rounding.

**b-bit codes** (b ∈ {8, 4, 2}; blockwise scales as in Dettmers et al., 2022, "8-bit
Optimizers via Block-wise Quantization"). A group ``x`` of ``g`` values has the scale
``s = max|x|`` (rounded *up* to bf16, so ``s ≥ max|x|``) and ``L = 2^b − 1`` steps of
``Δ = 2s/L`` spanning ``[−s, s]``; every code is used (2 bits: ``±s, ±s/3``)::

    u = (x/s + 1)·L/2 ∈ [0, L]         q = ⌊u⌉ (nearest)  or  q = ⌊u + ξ⌋, ξ ~ U[0, 1)
    x̂ = s·(2q/L − 1)

Nearest: ``|x − x̂| ≤ Δ/2 = s/L``. Stochastic: ``|x − x̂| < Δ`` and ``E[q] = u``, so
``E[x̂] = x`` (unbiased, Gupta et al., 2015; QSGD, Alistarh et al., 2017) with
``Var[x̂] = Δ²·p(1−p) ≤ s²/L²`` where ``p = u − ⌊u⌋``.

**16 bits** (fp16 or bf16). Nearest is the usual cast. Stochastic rounding picks one of
the two neighbours ``lo ≤ x ≤ hi`` of the format, ``hi`` with probability
``(x − lo)/(hi − lo)``, so again ``E[x̂] = x``.

Every random draw comes from the caller's seeded ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpeft.compression.plan import HALF_DTYPES, SCALE_DTYPE
from fedpeft.compression.scheme import Half, Rounding
from fedpeft.errors import FedpeftError

TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero group (bf16 holds it)


def levels(bits: int) -> int:
    """``L = 2^b − 1``: the steps of a b-bit code."""
    return 2**bits - 1


def round_up_scale(amax: Tensor) -> Tensor:
    """``s``: ``max(amax, TINY)`` as the smallest bf16 value not below it."""
    want = amax.double().clamp_min(TINY)
    s = want.to(SCALE_DTYPE)
    up = torch.nextafter(s, torch.full_like(s, float("inf")))
    return torch.where(s.double() < want, up, s)


def _grouped(x: Tensor, group: int) -> Tensor:
    """``x`` (1-D) zero-padded to whole groups, one group a row."""
    pad = (-x.numel()) % group
    return torch.cat([x, x.new_zeros(pad)]).view(-1, group)


def quantize(
    x: Tensor, group: int, bits: int, rounding: Rounding, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(uint8 codes, one per value; bf16 scales, one per group) of the 1-D float32 ``x``."""
    if x.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=SCALE_DTYPE)
    steps = levels(bits)
    rows = _grouped(x.double(), group)  # float64: u is exact to ~1e-13 of a step
    scales = round_up_scale(rows.abs().amax(dim=1))
    u = (rows / scales.double()[:, None] + 1.0) * (steps / 2)
    if rounding == "nearest":
        q = torch.round(u)
    else:
        q = torch.floor(u + torch.rand(u.shape, generator=generator, dtype=u.dtype))
    codes = q.clamp(0, steps).to(torch.uint8).reshape(-1)[: x.numel()]
    return codes, scales


def dequantize(codes: Tensor, scales: Tensor, group: int, bits: int) -> Tensor:
    """``x̂ = s·(2q − L)/L`` for every code (in float64, then float32)."""
    if codes.numel() == 0:
        return torch.zeros(0)
    steps = levels(bits)
    per_value = scales.double().repeat_interleave(group)[: codes.numel()]
    return (per_value * (2 * codes.double() - steps) / steps).float()


def to_half(x: Tensor, half: Half, rounding: Rounding, generator: torch.Generator | None) -> Tensor:
    """``x`` (float32) in fp16/bf16; values beyond the format's range are refused."""
    dtype = HALF_DTYPES[half]
    biggest = torch.finfo(dtype).max
    if x.numel() and float(x.abs().max()) > biggest:
        raise FedpeftError(
            f"a delta value exceeds {half}'s range (±{biggest:g}); "
            "send it with `compression.half = 'bf16'` or 32 bits."
        )
    near = x.to(dtype)
    if rounding == "nearest" or x.numel() == 0:
        return near
    below = near.float() > x  # the nearest is above x: the other neighbour is below
    toward = torch.where(below, float("-inf"), float("inf")).to(dtype)
    other = torch.nextafter(near, toward)
    gap = (other.double() - near.double()).abs()
    p_other = ((x.double() - near.double()).abs() / gap).nan_to_num(0.0)
    draw = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return torch.where(draw < p_other, other, near)
