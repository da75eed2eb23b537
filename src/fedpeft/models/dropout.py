"""Dropout whose mask costs a quarter of torch's on a CPU.

Training MiniLM with LoRA on one CPU thread spent 16 % of every step in ``bernoulli_``: the
base model's hidden-state dropouts and LoRA's input dropouts draw one Mersenne-Twister
number per element (torch hands the draw to MKL only on Intel CPUs; on others, AMD EPYC
here, it is a scalar loop). A mask needs far fewer random bits than that: this draws 64
bits per call of the generator and gives each element 16 of them, keeping it when they
clear a threshold — one generator call per four elements, then two vectorised integer
operations. No library offers this (``torch.nn.Dropout`` is the per-element draw, and the
fused CUDA kernels do not run on a CPU), hence our own module; on any other device and
outside ``[1/65536, 1 - 1/65536]`` it is ``torch.nn.functional.dropout`` itself.

The dropped fraction is ``p`` rounded to a multiple of 1/65536 (0.1 → 0.1000061) and the kept
elements are scaled by the inverse of the kept fraction, so the output's expectation is its
input, as with torch's. The bits come from torch's default generator, so a seeded client
draws the same masks in any process (results stay independent of the worker count), though
not the masks torch's own dropout would have drawn: ``run.fast_dropout = false`` keeps those.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # the values 16 random bits take


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheap mask above on a CPU (same ``p``, same modes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        dropped = round(self.p * _LEVELS)
        if x.device.type != "cpu" or not 0 < dropped < _LEVELS or not x.is_floating_point():
            return nn.functional.dropout(x, self.p, True, self.inplace)
        return x * keep_mask(x, dropped)


def keep_mask(x: torch.Tensor, dropped: int) -> torch.Tensor:
    """A mask shaped and typed like ``x``: 0 with probability ``dropped / 65536``, else the
    inverse of the kept fraction."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    bits = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    threshold = dropped - _LEVELS // 2  # kept iff bits >= threshold
    # clamp + shift: 0 below the threshold, 1 from it on, in two vectorised int16 passes
    # (a comparison and a bool → float cast take twice as long here)
    keep = bits.clamp(threshold - 1, threshold).sub_(threshold - 1)
    return keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))


def use_fast_dropout(model: nn.Module) -> int:
    """Replaces (in place) every ``nn.Dropout`` of ``model`` — the base's and the adapters'
    — by a ``FastDropout`` of the same ``p``; how many. Dropout applied inside attention
    kernels (``scaled_dot_product_attention``'s ``dropout_p``) is not a module and stays."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped
