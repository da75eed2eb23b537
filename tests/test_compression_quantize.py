"""Quantisers, packing and top-k: error bounds, unbiasedness, independent references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.compression.packed import pack, padding_is_zero, unpack
from fedpeft.compression.plan import kept_count
from fedpeft.compression.quantize import (
    TINY,
    dequantize,
    levels,
    quantize,
    round_up_scale,
    to_half,
)
from fedpeft.compression.sparsify import scatter, top_k
from fedpeft.errors import FedpeftError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _per_value(scales: torch.Tensor, group: int, n: int) -> torch.Tensor:
    return scales.float().repeat_interleave(group)[:n]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("group", [1, 7, 64, 1000])
def test_round_trip_within_the_scheme_bound(bits: int, rounding: str, group: int) -> None:
    x = torch.randn(777, generator=_gen(1)) * torch.logspace(-6, 1, 777)
    codes, scales = quantize(x, group, bits, rounding, _gen(2))  # type: ignore[arg-type]
    assert codes.dtype == torch.uint8 and int(codes.max()) <= levels(bits)
    assert scales.dtype == torch.bfloat16 and len(scales) == math.ceil(777 / group)
    back = dequantize(codes, scales, group, bits)
    s = _per_value(scales, group, 777)
    step = 2 * s / levels(bits)
    bound = step / 2 if rounding == "nearest" else step
    assert ((x - back).abs() <= bound + s * 2**-22).all()  # + float32 rounding of x̂
    # the scale is the group's max |x| rounded up to bf16: s ≥ max|x|, s ≤ max|x|·(1 + 2⁻⁷)
    amax = torch.cat([x, x.new_zeros(-777 % group)]).view(-1, group).abs().amax(1)
    assert (scales.float() >= amax).all() and (scales.float() <= amax * (1 + 2**-7)).all()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_nearest_codes_match_an_independent_numpy_quantiser(bits: int) -> None:
    x = torch.randn(640, generator=_gen(3))
    codes, scales = quantize(x, 64, bits, "nearest", None)
    s = np.repeat(scales.float().numpy().astype(np.float64), 64)
    grid = np.linspace(-1.0, 1.0, 2**bits)  # the L + 1 levels spanning [−s, s]
    nearest = np.abs(x.numpy()[:, None] / s[:, None] - grid[None, :]).argmin(axis=1)
    # equal except where x sits (to float32 precision) halfway between two levels
    assert (codes.numpy() == nearest).mean() > 0.999


def test_stored_values_of_a_two_bit_group() -> None:
    codes, scales = quantize(torch.tensor([-3.0, -1.0, 1.0, 3.0, 0.9]), 5, 2, "nearest", None)
    assert scales.tolist() == [3.0]
    assert codes.tolist() == [0, 1, 2, 3, 2]
    assert dequantize(codes, scales, 5, 2).tolist() == [-3.0, -1.0, 1.0, 3.0, 1.0]


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_stochastic_rounding_is_unbiased(bits: int) -> None:
    """Mean of ``draws`` seeded quantisations within 5 standard errors of ``x``, with the
    exact per-value variance ``Δ²·p(1−p)`` (module docstring)."""
    x = torch.randn(64, generator=_gen(4))
    draws = 3000
    gen = _gen(5)
    total = torch.zeros(64, dtype=torch.float64)
    for _ in range(draws):
        codes, scales = quantize(x, 16, bits, "stochastic", gen)
        total += dequantize(codes, scales, 16, bits).double()
    mean = total / draws
    s = _per_value(scales, 16, 64).double()
    step = 2 * s / levels(bits)
    u = (x.double() / s + 1) * levels(bits) / 2
    p = u - u.floor()
    stderr = torch.sqrt(step**2 * p * (1 - p) / draws)
    assert ((mean - x.double()).abs() <= 5 * stderr + 1e-7).all()
    # the same test rejects nearest rounding, which is biased
    codes, scales = quantize(x, 16, bits, "nearest", None)
    biased = (dequantize(codes, scales, 16, bits).double() - x.double()).abs()
    assert (biased > 5 * stderr + 1e-7).any()


@pytest.mark.parametrize("half,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_nearest_is_the_cast_and_stochastic_picks_a_neighbour(
    half: str, dtype: torch.dtype
) -> None:
    x = torch.randn(500, generator=_gen(6)) * torch.logspace(-9, 3, 500)
    assert torch.equal(to_half(x, half, "nearest", None), x.to(dtype))  # type: ignore[arg-type]
    out = to_half(x, half, "stochastic", _gen(7))  # type: ignore[arg-type]
    assert out.dtype == dtype
    up = torch.nextafter(out, torch.full_like(out, float("inf"))).float()
    down = torch.nextafter(out, torch.full_like(out, float("-inf"))).float()
    assert ((down <= x) & (x <= up)).all()  # x̂ is one of x's two neighbours


@pytest.mark.parametrize("half", ["fp16", "bf16"])
def test_half_stochastic_rounding_is_unbiased(half: str) -> None:
    x = torch.randn(32, generator=_gen(8)) * 1e-3
    gen, draws = _gen(9), 4000
    total = torch.zeros(32, dtype=torch.float64)
    for _ in range(draws):
        total += to_half(x, half, "stochastic", gen).double()  # type: ignore[arg-type]
    near = x.to(torch.float16 if half == "fp16" else torch.bfloat16)
    other = torch.nextafter(near, torch.where(near.float() > x, -1.0, 1.0).to(near.dtype) * 1e9)
    gap = (other.double() - near.double()).abs()
    p = (x.double() - near.double()).abs() / gap
    stderr = torch.sqrt(gap**2 * p * (1 - p) / draws)
    assert ((total / draws - x.double()).abs() <= 5 * stderr + 1e-12).all()


def test_fp16_refuses_values_beyond_its_range() -> None:
    with pytest.raises(FedpeftError, match="bf16"):
        to_half(torch.tensor([1e6]), "fp16", "nearest", None)


def test_scale_of_an_all_zero_group_is_tiny_and_positive() -> None:
    s = round_up_scale(torch.tensor([0.0, 1.0, 3.0e-39]))
    assert s.float()[0] == TINY and s.float()[1] == 1.0 and (s.float() > 0).all()


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    codes=st.lists(st.integers(0, 255), min_size=0, max_size=70),
)
def test_pack_unpack_round_trip_and_numpy_reference(bits: int, codes: list[int]) -> None:
    c = torch.tensor([v % 2**bits for v in codes], dtype=torch.uint8)
    packed = pack(c, bits)
    assert packed.dtype == torch.uint8 and len(packed) == math.ceil(len(c) * bits / 8)
    assert torch.equal(unpack(packed, bits, len(c)), c)
    assert padding_is_zero(packed, bits, len(c))
    # reference: each code's b bits, lowest first, then numpy's little-endian bit packing
    bits_of = [(int(v) >> j) & 1 for v in c for j in range(bits)]
    ref = np.packbits(np.array(bits_of, dtype=np.uint8), bitorder="little")
    assert packed.numpy().tolist() == ref.tolist()


def test_stored_packed_bytes() -> None:
    assert pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 2).tolist() == [0b111001]
    assert pack(torch.tensor([0xA, 0x5, 0xF], dtype=torch.uint8), 4).tolist() == [0x5A, 0x0F]
    assert not padding_is_zero(torch.tensor([0xFF], dtype=torch.uint8), 4, 1)


def test_top_k_matches_numpy_and_contracts() -> None:
    x = torch.randn(1000, generator=_gen(10))
    positions, values = top_k(x, 37)
    ref = np.sort(np.argsort(-np.abs(x.numpy()))[:37])
    assert positions.tolist() == ref.tolist()
    assert torch.equal(values, x[positions])
    dense = scatter(1000, positions, values)
    # ‖x − T_k(x)‖² ≤ (1 − k/n)·‖x‖²
    assert float((x - dense).pow(2).sum()) <= (1 - 37 / 1000) * float(x.pow(2).sum())


@pytest.mark.parametrize(
    "n,frac,k", [(3000, 0.1, 300), (3072, 0.01, 31), (2, 0.01, 1), (0, 0.5, 0), (5, 1.0, 5)]
)
def test_kept_count(n: int, frac: float, k: int) -> None:
    assert kept_count(n, frac) == k
