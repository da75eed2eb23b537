"""The shape of a compressed message, known from the layout and the scheme alone.

Each tensor ``t`` (``n_t`` values) sends ``m_t`` values: all of them, or the top
``k_t = min(n_t, max(1, ⌈topk·n_t⌉))``. The values of all tensors travel concatenated in
layout order, as at most four safetensors tensors:

=========  =============================  ==========================================
name       dtype                          length
=========  =============================  ==========================================
values     float32 / fp16 / bf16          ``M = Σ m_t``              (32 or 16 bits)
codes      uint8, ``8/b`` codes a byte    ``⌈M·b/8⌉``                (8, 4, 2 bits)
scales     bfloat16                       ``Σ ⌈m_t/g_t⌉``            (8, 4, 2 bits)
indices    int16 (every n_t ≤ 2¹⁵)/int32  ``M``                      (top-k only)
=========  =============================  ==========================================

``g_t`` is the group size, or the row length ``shape[-1]`` for per-row scales. So the
receiver knows every size before it reads a byte, and the data bytes are exactly
``Σ length·itemsize`` (``message_bytes`` adds the safetensors header).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedpeft.compression.scheme import CompressionScheme, DeltaLayout

VALUES, CODES, SCALES, INDICES = "values", "codes", "scales", "indices"
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SCALE_DTYPE = torch.bfloat16  # fp32's range in 2 bytes: no scale can underflow or overflow
INT16_MAX_NUMEL = 2**15  # tensors this small index their values with int16


def kept_count(numel: int, topk: float | None) -> int:
    """``m = n`` without top-k, else ``min(n, max(1, ⌈topk·n⌉))`` (0 for an empty tensor);
    the product is rounded to 9 digits first so that e.g. 0.1·3000 gives 300, not 301."""
    if topk is None or numel == 0:
        return numel
    return min(numel, max(1, math.ceil(round(topk * numel, 9))))


@dataclass(frozen=True)
class Segment:
    """One tensor's part of the message."""

    key: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    group: int

    @property
    def groups(self) -> int:
        return math.ceil(self.kept / self.group)


def _segment(key: str, shape: tuple[int, ...], scheme: CompressionScheme) -> Segment:
    numel = math.prod(shape)
    row = shape[-1] if shape else 1
    group = scheme.group_size if scheme.group_size is not None else max(1, row)
    return Segment(key, shape, numel, kept_count(numel, scheme.topk), group)


@dataclass(frozen=True)
class Plan:
    """Where every value of a layout goes under a scheme, and the message's tensors."""

    scheme: CompressionScheme
    segments: tuple[Segment, ...]

    @property
    def kept(self) -> int:
        """``M``: values sent."""
        return sum(s.kept for s in self.segments)

    @property
    def index_dtype(self) -> torch.dtype:
        small = all(s.numel <= INT16_MAX_NUMEL for s in self.segments)
        return torch.int16 if small else torch.int32

    def wire(self) -> dict[str, tuple[torch.dtype, int]]:
        """The message's tensors: name → (dtype, length)."""
        bits, m = self.scheme.bits, self.kept
        out: dict[str, tuple[torch.dtype, int]] = {}
        if bits == 32:
            out[VALUES] = (torch.float32, m)
        elif bits == 16:
            out[VALUES] = (HALF_DTYPES[self.scheme.half], m)
        else:
            out[CODES] = (torch.uint8, math.ceil(m * bits / 8))
            out[SCALES] = (SCALE_DTYPE, sum(s.groups for s in self.segments))
        if self.scheme.topk is not None:
            out[INDICES] = (self.index_dtype, m)
        return out

    def data_bytes(self) -> int:
        """``Σ length·itemsize`` over the message's tensors."""
        return sum(n * dtype.itemsize for dtype, n in self.wire().values())


def make_plan(layout: DeltaLayout, scheme: CompressionScheme) -> Plan:
    return Plan(scheme, tuple(_segment(key, shape, scheme) for key, shape in layout))
