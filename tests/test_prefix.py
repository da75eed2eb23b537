"""The frozen-prefix cache: what it serves equals what the blocks compute, and it is only
served where nothing below it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.peft import get_adapter_state, parse_spec, set_adapter_state
from fedpeft.peft.prefix import PrefixCache, attach
from fedpeft.peft.share import apply_shared
from fedpeft.server.evaluate import predict_logits
from fedpeft.server.prefix import cache_bytes, cached_layer
from fedpeft.server.task import build_task

TOP = "peft.layers=[1]"  # tiny-bert has blocks 0 and 1: LoRA on block 1 only


def _perturbed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = get_adapter_state(model)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest.mark.parametrize("method", [TOP, "peft.method='head'"])
def test_served_prefix_gives_the_outputs_of_the_whole_model(tiny, method: str) -> None:
    cached = build_task(tiny(method))
    plain = build_task(tiny(method, "run.prefix_cache=false"))
    ((layer, cache),) = cached.prefix_caches.items()
    assert cache is not None and layer == (1 if method == TOP else 2)
    assert plain.prefix_caches == {}
    state = _perturbed(plain.model)
    for task in (cached, plain):
        set_adapter_state(task.model, state)
    split = cached.data.eval
    a = predict_logits(cached.model, split, 16, torch.device("cpu"))
    b = predict_logits(plain.model, split, 16, torch.device("cpu"))
    assert cache.hits == len(split) and cache.misses == 0  # every example came from the cache
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_through_the_served_prefix_match(tiny) -> None:
    """Without dropout (evaluation mode) a training step's gradients are the same."""
    cached, plain = build_task(tiny(TOP)), build_task(tiny(TOP, "run.prefix_cache=false"))
    state = _perturbed(plain.model)
    batch = cached.data.train.collate(np.arange(16)).model_inputs()
    grads = []
    for task in (cached, plain):
        set_adapter_state(task.model, state)
        task.model.eval()
        task.model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in task.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_unknown_examples_run_the_whole_model(tiny) -> None:
    task = build_task(tiny(TOP))
    cache = task.prefix_caches[1]
    assert cache is not None
    ids = torch.tensor([[101, 7592, 2088, 999, 102, 0]])  # not in the splits
    assert cache.lookup(ids) is None and cache.misses == 1
    model = task.model.eval()
    out = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    plain = build_task(tiny(TOP, "run.prefix_cache=false")).model.eval()
    torch.testing.assert_close(out, plain(input_ids=ids, attention_mask=(ids != 0).long()).logits)


def test_nothing_is_cached_where_the_bottom_trains(tiny) -> None:
    for method in ("peft.method='bitfit'", "peft.method='prompt'", "peft.method='lora'"):
        task = build_task(tiny(method))
        assert cached_layer(task, task.method) is None and task.prefix_caches == {}


def test_attach_refuses_when_a_parameter_below_trains(tiny) -> None:
    task = build_task(tiny(TOP, "run.prefix_cache=false"))
    spec = parse_spec("lora", {"layers": [1]})
    model = apply_shared(task.base, spec, task.arch, 0)
    next(p for n, p in model.named_parameters() if "layer.0." in n).requires_grad_(True)
    assert not attach(model, task.arch, PrefixCache(1, 0))
    fresh = apply_shared(task.base, spec, task.arch, 0)
    assert attach(fresh, task.arch, PrefixCache(1, 0))


def test_cache_size_bound() -> None:
    assert cache_bytes(1000, 384, None) == 1000 * 384 * 4
    assert cache_bytes(1000, 384, torch.bfloat16) == 1000 * 384 * 2
