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

Attention-probability dropout is no module: ``transformers`` hands ``dropout`` to
``scaled_dot_product_attention``, whose CPU math path draws the same per-element mask and
adds a fully-masked-row test (``isneginf``, ``all``, ``where``): 5 % of MiniLM's step.
``SDPA_FAST_DROPOUT`` is an attention implementation registered with ``transformers``'
``AttentionInterface`` that is exactly ``sdpa`` except in training on a CPU with dropout,
where it computes the same float32 attention (as the math path does) with the cheap mask.

The same attention function also chooses the precision of half-precision training on a
CPU: SDPA's CPU flash kernel trains 1.1-5x slower on bf16 queries, keys and values than
on the same tensors in float32 up to ``FLOAT32_UP_TO`` keys (forward + backward; measured
in BENCHMARKS, issue 19), so there they go to it in float32 and the output comes back in
the queries' dtype (the backward then keeps float32 copies: twice bf16's memory for that
layer's queries, keys, values and output). Everything else is ``sdpa`` as it dispatches
itself: evaluation, attention whose inputs need no gradient, float32 models, longer
sequences, attention dropout (SDPA's math backend, float32 inside anyway), position
biases, GPUs and compiled code. Under ``run.fast_dropout = false`` this choice stays and
torch's masks are drawn (``SDPA_TORCH_MASKS``).

The dropped fraction is ``p`` rounded to a multiple of 1/65536 (0.1 → 0.1000061) and the kept
elements are scaled by the inverse of the kept fraction, so the output's expectation is its
input, as with torch's. The bits come from torch's default generator, so a seeded client
draws the same masks in any process (results stay independent of the worker count), though
not the masks torch's own dropout would have drawn: ``run.fast_dropout = false`` keeps those.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

_LEVELS = 1 << 16  # the values 16 random bits take
# From this many elements (a float32 mask of 4 MiB: a decoder's LoRA inputs at long
# sequences) the backward keeps the int16 mask rather than the float one autograd keeps for
# a product; below, the plain product is faster (no Python autograd function) and small.
_LEAN_FROM = 1 << 20


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheap mask above on a CPU (same ``p``, same modes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        dropped = round(self.p * _LEVELS)
        if x.device.type != "cpu" or not 0 < dropped < _LEVELS or not x.is_floating_point():
            return nn.functional.dropout(x, self.p, True, self.inplace)
        return drop(x, dropped)


def drop(x: torch.Tensor, dropped: int) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``dropped / 65536``, the others scaled
    by the inverse of the kept fraction (a CPU tensor, ``0 < dropped < 65536``)."""
    if x.numel() >= _LEAN_FROM and x.requires_grad:
        return _Dropout.apply(x, dropped)  # memory first: the same numbers
    return x * _scaled(keep_bits(x.shape, dropped), x.dtype, dropped)


def _scaled(keep: torch.Tensor, dtype: torch.dtype, dropped: int) -> torch.Tensor:
    """The float mask: ``keep`` (int16, 0 or 1) in ``dtype``, times the inverse of the kept
    fraction. Made apart from the product: float times int16 (type promotion) is slower."""
    return keep.to(dtype).mul_(_LEVELS / (_LEVELS - dropped))


def keep_bits(shape: torch.Size | tuple[int, ...], dropped: int) -> torch.Tensor:
    """An int16 tensor of ``shape``: 0 with probability ``dropped / 65536``, else 1."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    threshold = dropped - _LEVELS // 2  # kept iff bits >= threshold
    # clamp + shift: 0 below the threshold, 1 from it on, in two vectorised int16 passes
    # (a comparison and a bool → float cast take twice as long here)
    return bits.clamp(threshold - 1, threshold).sub_(threshold - 1)


class _Dropout(torch.autograd.Function):
    """``x`` masked and scaled, as ``FastDropout`` computes it, but the backward keeps the
    int16 mask (2 bytes an element; torch's own keeps 1, the float mask 4 or 2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dropped: int) -> torch.Tensor:
        keep = keep_bits(x.shape, dropped)
        ctx.save_for_backward(keep)
        ctx.dropped = dropped
        return x * _scaled(keep, x.dtype, dropped)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad * _scaled(keep, grad.dtype, ctx.dropped), None


SDPA_FAST_DROPOUT = "fedpeft_sdpa"
SDPA_TORCH_MASKS = "fedpeft_sdpa_torch_masks"
_OURS = (SDPA_FAST_DROPOUT, SDPA_TORCH_MASKS)
FLOAT32_UP_TO = 384  # keys: up to here SDPA's CPU flash kernel trains faster in float32


def sdpa_fast_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``transformers``' ``sdpa`` attention, but with ``FastDropout``'s mask on the
    attention probabilities when training on a CPU (bidirectional attention, as many key as
    query heads, no position bias or cache: encoders), and float32 attention for
    half-precision training on a CPU (``sdpa_on_cpu``)."""
    dropped = round(dropout * _LEVELS)
    plain = (
        query.device.type != "cpu"
        or not 0 < dropped < _LEVELS
        or bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        or key.shape[1] != query.shape[1]
        or any(kwargs.get(k) is not None for k in ("position_bias", "cache", "softcap"))
    )
    if plain:
        return sdpa_on_cpu(module, query, key, value, attention_mask, dropout, scaling,
                           is_causal, **kwargs)  # fmt: skip
    dtype = query.dtype
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast("cpu", enabled=False):  # float32, as SDPA's math path computes it
        q, k, v = query.float(), key.float(), value.float()
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        elif attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(drop(probs, dropped), v)
    return out.transpose(1, 2).contiguous().to(dtype), None


def sdpa_on_cpu(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``transformers``' ``sdpa`` attention (torch's masks), computed in float32 when
    training in half precision on a CPU over at most ``FLOAT32_UP_TO`` keys without
    dropout or a position bias, where SDPA's CPU flash kernel is faster in float32, and
    returned in the queries' dtype. Anything else is ``sdpa`` as it dispatches itself."""
    kw = kwargs | {"dropout": dropout, "scaling": scaling, "is_causal": is_causal}
    dtype = query.dtype
    if (
        not torch.compiler.is_compiling()  # first: a length test would guard the graph
        and query.device.type == "cpu"
        and dtype in (torch.bfloat16, torch.float16)
        and not dropout
        and kwargs.get("position_bias") is None
        and torch.is_grad_enabled()
        and (query.requires_grad or key.requires_grad or value.requires_grad)
        and key.shape[-2] <= FLOAT32_UP_TO
    ):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # an additive mask takes the queries' dtype
        with torch.autocast("cpu", enabled=False):
            out, _ = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kw
            )
        return out.to(dtype), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)


AttentionInterface.register(SDPA_FAST_DROPOUT, sdpa_fast_dropout)
AttentionInterface.register(SDPA_TORCH_MASKS, sdpa_on_cpu)
for _name in (SDPA_FAST_DROPOUT, SDPA_TORCH_MASKS):
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, sdpa_mask)  # sdpa's masks


def use_cpu_attention(model: nn.Module) -> int:
    """``sdpa`` attention of ``model`` replaced (in place) by ``SDPA_TORCH_MASKS`` (the
    CPU kernel choice alone, torch's dropout masks); how many configs changed."""
    return _set_attention(model, SDPA_TORCH_MASKS)


def _set_attention(model: nn.Module, name: str) -> int:
    changed = 0
    for config in _configs(model):
        if getattr(config, "_attn_implementation", None) in ("sdpa", *_OURS):
            config._attn_implementation = name
            changed += 1
    return changed


def use_fast_dropout(model: nn.Module) -> int:
    """Replaces (in place) every ``nn.Dropout`` of ``model`` — the base's and the adapters'
    — by a ``FastDropout`` of the same ``p``, and ``sdpa`` attention by ``SDPA_FAST_DROPOUT``
    (the attention probabilities' dropout); how many modules."""
    _set_attention(model, SDPA_FAST_DROPOUT)
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct ``transformers`` config object of ``model``'s modules (the attention
    layers read theirs at each forward)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())
