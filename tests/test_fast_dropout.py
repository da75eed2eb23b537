"""The CPU dropout drawn from 16 random bits an element: the same distribution as torch's
dropout (dropped fraction, scale, expectation, gradient), seeded like it, and swapped into
every dropout module and the attention of a built task unless ``run.fast_dropout = false``;
and float32 attention for half-precision training on a CPU."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from fedpeft.models.dropout import (
    FLOAT32_UP_TO,
    SDPA_FAST_DROPOUT,
    SDPA_TORCH_MASKS,
    FastDropout,
    drop,
    keep_bits,
    sdpa_fast_dropout,
    sdpa_on_cpu,
    use_fast_dropout,
)
from fedpeft.server.evaluate import predict_logits
from fedpeft.server.task import build_task


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_drops_the_asked_fraction_and_scales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(1_000_003) + 0.5  # odd size: the last word's bits are cut
    y = FastDropout(p).train()(x)
    dropped = (y == 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(dropped - p) < 5 * sigma
    kept = y != 0
    q = round(p * 65536) / 65536  # the fraction it draws with
    torch.testing.assert_close(y[kept], x[kept] / (1 - q))
    assert abs(y.double().mean().item() / x.double().mean().item() - 1) < 6 * sigma / (1 - p)


def test_masks_are_independent_across_elements_and_bit_positions() -> None:
    """Each element takes its own 16 bits of a 64-bit word: neighbours (the same word and
    the next) are dropped independently, whatever their place in the word."""
    torch.manual_seed(1)
    drop = keep_bits((400_000,), round(0.5 * 65536)) == 0
    by_place = drop.view(-1, 4).double().mean(dim=0)
    assert torch.all((by_place - 0.5).abs() < 0.01), by_place
    both = (drop[:-1] & drop[1:]).double().mean().item()
    assert abs(both - 0.25) < 0.005


def test_gradient_is_the_mask() -> None:
    torch.manual_seed(2)
    x = torch.randn(8, 5, 16, requires_grad=True)
    y = FastDropout(0.2).train()(x)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.where(y != 0, 1 / (1 - 13107 / 65536), 0.0))


def test_large_inputs_keep_an_int16_mask_for_the_same_numbers() -> None:
    """From 2^20 elements the backward keeps the int16 mask (memory), not the float one;
    outputs and gradients are those of the plain product, bit for bit."""
    x = torch.randn(1 << 20, requires_grad=True)
    torch.manual_seed(6)
    lean = drop(x, 6554)
    (saved,) = lean.grad_fn.saved_tensors
    assert saved.dtype == torch.int16
    lean.backward(torch.ones_like(lean))
    lean_grad, x.grad = x.grad, None
    small = x[:-1]  # one element fewer: the plain product
    torch.manual_seed(6)
    plain = drop(small, 6554)
    assert plain.grad_fn._saved_other.dtype == torch.float32  # autograd's product keeps it
    plain.backward(torch.ones_like(plain))
    assert torch.equal(lean[:-1], plain)  # the same bits: a prefix of the same stream
    assert lean_grad is not None and x.grad is not None
    assert torch.equal(lean_grad[:-1], x.grad[:-1])


def test_seeded_like_torch_and_idle_when_it_should_be() -> None:
    x = torch.randn(4, 7, 9)
    drop = FastDropout(0.1).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    assert not torch.equal(a, drop(x))  # the stream moved on
    assert drop.eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))  # torch's own


@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    p=st.floats(1e-7, 0.999),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
@settings(max_examples=60, deadline=None)
def test_any_shape_dtype_and_rate_keeps_shape_dtype_and_values(
    shape: list[int], p: float, dtype: torch.dtype
) -> None:
    x = torch.randn(*shape).to(dtype)
    y = FastDropout(p).train()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    kept = y != 0
    ratio = y[kept].double() / x[kept].double()  # every kept element scaled alike
    eps = torch.finfo(dtype).eps  # (to the rounding of the product; x = 0 stays 0 anyway)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=2 * eps, atol=0.0)


def _attention_inputs() -> tuple[
    torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second sequence is padded after 3 tokens
    module = torch.nn.Module()
    module.is_causal = False
    return module, q, k, v, mask


def test_attention_without_dropout_is_sdpa_itself() -> None:
    module, q, k, v, mask = _attention_inputs()
    ours, _ = sdpa_fast_dropout(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert torch.equal(ours, theirs)


def test_causal_attention_is_sdpa_itself_with_dropout_too() -> None:
    """A module that does not say it is bidirectional is causal to ``sdpa``: left to it."""
    _, q, k, v, _ = _attention_inputs()
    module = torch.nn.Module()
    torch.manual_seed(7)
    ours, _ = sdpa_fast_dropout(module, q, k, v, None, dropout=0.1, scaling=0.3)
    torch.manual_seed(7)
    theirs, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.1, scaling=0.3)
    assert torch.equal(ours, theirs)


def test_attention_dropout_is_the_mask_on_the_probabilities_and_keeps_the_expectation() -> None:
    module, q, k, v, mask = _attention_inputs()
    torch.manual_seed(5)
    out, _ = sdpa_fast_dropout(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    torch.manual_seed(5)
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask, -1e30), dim=-1)
    expected = (probs * keep_bits(probs.shape, 6554)).mul_(65536 / (65536 - 6554)) @ v
    torch.testing.assert_close(out, expected.transpose(1, 2))
    assert (out[1] != 0).any()
    clean, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    draws = torch.stack(
        [sdpa_fast_dropout(module, q, k, v, mask, 0.1, 0.3)[0] for _ in range(3000)]
    )
    torch.testing.assert_close(draws.mean(0), clean, atol=0.05, rtol=0.0)  # ~5 sigma


def test_a_task_trains_through_fast_dropout_unless_told_not_to(tiny) -> None:
    fast = build_task(tiny())
    plain = build_task(tiny("run.fast_dropout=false"))
    assert fast.model.config._attn_implementation == SDPA_FAST_DROPOUT
    assert plain.model.config._attn_implementation == SDPA_TORCH_MASKS  # the kernel choice
    cpu = torch.device("cpu")  # evaluation (no dropout) is unchanged
    a = predict_logits(fast.model, fast.data.eval, 16, cpu)
    assert torch.equal(a, predict_logits(plain.model, plain.data.eval, 16, cpu))
    kinds = [type(m) for m in fast.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert kinds and set(kinds) == {FastDropout}  # the base's and LoRA's dropouts alike
    assert {type(m) for m in plain.model.modules() if isinstance(m, torch.nn.Dropout)} == {
        torch.nn.Dropout
    }
    assert [m.p for m in fast.model.modules() if isinstance(m, torch.nn.Dropout)] == [
        m.p for m in plain.model.modules() if isinstance(m, torch.nn.Dropout)
    ]


def test_swap_keeps_rate_mode_and_counts() -> None:
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.3), torch.nn.ModuleDict({"a": torch.nn.Dropout(0.05)}), torch.nn.ReLU()
    ).eval()
    assert use_fast_dropout(net) == 2
    assert isinstance(net[0], FastDropout) and net[0].p == 0.3 and not net[0].training
    assert isinstance(net[1]["a"], FastDropout) and net[1]["a"].p == 0.05
    assert use_fast_dropout(net) == 0  # already swapped


def _dropout_noise(task) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Mean and spread over 300 seeded train-mode passes of one batch's logits."""
    model = task.model.train()
    batch = task.data.eval.collate(np.arange(16))
    outs = []
    with torch.no_grad():
        for seed in range(300):
            torch.manual_seed(seed)
            outs.append(model(**batch.model_inputs(with_labels=False)).logits)
    stacked = torch.stack(outs)
    return stacked.mean(0), stacked.std(0)


def test_a_model_is_as_noisy_under_fast_dropout_as_under_torchs(tiny) -> None:
    """The base's dropouts, LoRA's and the attention's together: over many masks the logits
    scatter as much (and about the same centre) as under torch's dropout. A coarse check
    (tiny-bert's spread ratio is 0.987; a dropout module's rate doubled gives 1.66); the
    exact mask, scale and gradient are the tests above."""
    fast_mean, fast_std = _dropout_noise(build_task(tiny()))
    torch_mean, torch_std = _dropout_noise(build_task(tiny("run.fast_dropout=false")))
    assert torch_std.mean() > 0
    ratio = (fast_std.mean() / torch_std.mean()).item()
    assert 0.93 < ratio < 1.07, ratio
    # the centres differ by the masks' sampling error only (~std / sqrt(300) each)
    assert ((fast_mean - torch_mean).abs() < 5 * torch_std / 300**0.5 * 2**0.5).all()


_HANDED: list[torch.Tensor] = []  # the query tensors SDPA got in the last ``_run``


def _run(fn, *args, **kw) -> tuple[list[torch.dtype], torch.Tensor, tuple[torch.Tensor, ...]]:
    """The dtypes ``fn`` handed SDPA, its output and its inputs' gradients."""
    seen: list[torch.dtype] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        seen.append(q.dtype)
        _HANDED.append(q)
        return sdpa(q, *a, **k)

    _HANDED.clear()

    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads: tuple[torch.Tensor, ...] = ()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        out, _ = fn(*args, **kw)
        if out.requires_grad:
            grads = torch.autograd.grad(out.float().square().sum(), inputs)
    return seen, out, grads


@pytest.mark.parametrize("causal_gqa", [False, True])
def test_short_bf16_training_attends_in_float32_with_the_same_result(causal_gqa: bool) -> None:
    """Half-precision training over up to ``FLOAT32_UP_TO`` keys hands SDPA float32 (its CPU
    flash kernel is faster so) and returns the queries' dtype, with bf16 SDPA's result up
    to bf16 rounding; evaluation, float32 and longer sequences are SDPA's as given."""
    g = torch.Generator().manual_seed(11)
    heads, kv_heads = (6, 2) if causal_gqa else (4, 4)
    module = torch.nn.Module()
    module.is_causal = causal_gqa
    module.num_key_value_groups = heads // kv_heads

    def inputs(length: int, dtype: torch.dtype) -> list[torch.Tensor]:
        shapes = [(2, heads, length, 16), (2, kv_heads, length, 16), (2, kv_heads, length, 16)]
        return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]

    def padding(length: int) -> torch.Tensor | None:
        if causal_gqa:
            return None
        mask = torch.ones(2, 1, 1, length, dtype=torch.bool)
        mask[1, ..., 13:] = False
        return mask

    q, k, v = inputs(20, torch.bfloat16)
    seen, out, grads = _run(sdpa_on_cpu, module, q, k, v, padding(20), scaling=0.25)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    ref_seen, ref, ref_grads = _run(
        sdpa_attention_forward, module, q, k, v, padding(20), scaling=0.25
    )
    assert ref_seen == [torch.bfloat16]
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, ref_grads, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)
    with torch.no_grad():  # evaluation
        assert _run(sdpa_on_cpu, module, q, k, v, padding(20), scaling=0.25)[0] == [torch.bfloat16]
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    assert _run(sdpa_on_cpu, module, q32, k32, v32, padding(20))[0] == [torch.float32]
    assert _HANDED[0] is q32  # a float32 model's queries go to SDPA as they are
    frozen = [t.detach() for t in (q, k, v)]  # gradients on, none needed (frozen blocks)
    assert _run(sdpa_on_cpu, module, *frozen, padding(20))[0] == [torch.bfloat16]
    assert _HANDED[0] is frozen[0]
    with_dropout = _run(sdpa_on_cpu, module, q, k, v, padding(20), dropout=0.1)
    assert with_dropout[0] == [torch.bfloat16]  # SDPA's math backend: float32 inside anyway
    bias = torch.zeros(2, heads, 20, 20, dtype=torch.bfloat16)
    assert _run(sdpa_on_cpu, module, q, k, v, None, position_bias=bias)[0] == [torch.bfloat16]
    edge, long = FLOAT32_UP_TO, FLOAT32_UP_TO + 1
    qe, ke, ve = inputs(edge, torch.bfloat16)
    assert _run(sdpa_on_cpu, module, qe, ke, ve, padding(edge))[0] == [torch.float32]
    ql, kl, vl = inputs(long, torch.bfloat16)
    assert _run(sdpa_on_cpu, module, ql, kl, vl, padding(long))[0] == [torch.bfloat16]


def test_the_float32_path_keeps_an_explicit_is_causal() -> None:
    """``is_causal`` handed by the caller wins over the module's, as in ``sdpa``."""
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True
    bq, bk, bv = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    for causal in (False, True):
        out, _ = sdpa_on_cpu(module, bq, bk, bv, None, scaling=0.3, is_causal=causal)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=0.3, is_causal=causal
        ).transpose(1, 2)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_an_additive_mask_follows_the_queries_to_float32() -> None:
    _, q, k, v, mask = _attention_inputs()
    module = torch.nn.Module()
    module.is_causal = False
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill_(~mask, -1e4)
    qb, kb, vb = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    seen, out, _ = _run(sdpa_on_cpu, module, qb, kb, vb, additive, scaling=0.3)
    assert seen == [torch.float32]
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_fast_dropout_attention_without_dropout_takes_the_same_choice() -> None:
    _, q, k, v, mask = _attention_inputs()
    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    seen, out, _ = _run(sdpa_fast_dropout, module, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert seen == [torch.float32]
    torch.testing.assert_close(out, sdpa_on_cpu(module, q, k, v, mask, scaling=0.3)[0])
