"""Staleness-aware buffered updates against a numpy reference and by invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.aggregation import StaleUpdate, buffer_full, staleness_update, staleness_weight
from fedpeft.types import AdapterState


def _state(g: torch.Generator) -> AdapterState:
    return {
        "a.lora_A.weight": torch.randn(2, 3, generator=g),
        "head.bias": torch.randn(2, generator=g),
    }


def _buffer(seed: int) -> tuple[AdapterState, list[StaleUpdate]]:
    g = torch.Generator().manual_seed(seed)
    global_state = _state(g)
    buf = [StaleUpdate(_state(g), _state(g), float(n), tau) for n, tau in [(3, 0), (5, 2), (1, 7)]]
    return global_state, buf


def test_staleness_weight_is_fedasync_polynomial() -> None:
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(9, 1.0) == pytest.approx(0.1)
    assert staleness_weight(5, 0.0) == 1.0
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(-1, 0.5)
    with pytest.raises(ValueError, match="exponent"):
        staleness_weight(1, -0.5)


@pytest.mark.parametrize(("lr", "a"), [(1.0, 0.0), (0.7, 0.5), (2.0, 1.3)])
def test_staleness_update_matches_numpy(lr: float, a: float) -> None:
    global_state, buf = _buffer(0)
    out = staleness_update(global_state, buf, lr=lr, exponent=a)
    total = sum(u.num_examples for u in buf)
    for key, value in global_state.items():
        step = sum(
            u.num_examples
            * (1 + u.staleness) ** (-a)
            / total
            * (u.state[key].double().numpy() - u.start[key].double().numpy())
            for u in buf
        )
        np.testing.assert_allclose(out[key].numpy(), value.double().numpy() + lr * step, rtol=1e-6)
        assert out[key].dtype == value.dtype


def test_fresh_clients_from_the_current_global_give_fedavg() -> None:
    """τ = 0, η = 1, every client started from θ^{t−1}: the step lands on FedAvg."""
    global_state, buf = _buffer(1)
    fresh = [StaleUpdate(u.state, global_state, u.num_examples, 0) for u in buf]
    out = staleness_update(global_state, fresh, lr=1.0, exponent=0.5)
    for key in global_state:
        expected = np.average([u.state[key].numpy() for u in buf], axis=0, weights=[3, 5, 1])
        np.testing.assert_allclose(out[key].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_permutation_invariant_inputs_untouched_and_zero_delta_is_identity() -> None:
    global_state, buf = _buffer(2)
    copies = [{k: v.clone() for k, v in u.state.items()} for u in buf]
    out = staleness_update(global_state, buf)
    rev = staleness_update(global_state, buf[::-1])
    for key in out:
        torch.testing.assert_close(out[key], rev[key])
    assert all(torch.equal(u.state[k], c[k]) for u, c in zip(buf, copies, strict=True) for k in c)
    same = [StaleUpdate(u.start, u.start, u.num_examples, u.staleness) for u in buf]
    for key, value in staleness_update(global_state, same).items():
        torch.testing.assert_close(value, global_state[key], rtol=0, atol=0)


def test_buffer_and_bad_inputs() -> None:
    global_state, buf = _buffer(3)
    assert not buffer_full(buf, 4) and buffer_full(buf, 3)
    with pytest.raises(ValueError, match="buffer_size"):
        buffer_full(buf, 0)
    with pytest.raises(ValueError, match="at least one"):
        staleness_update(global_state, [])
    with pytest.raises(ValueError, match="lr"):
        staleness_update(global_state, buf, lr=0.0)
    odd = StaleUpdate({"x": torch.zeros(1)}, buf[0].start, 1.0, 0)
    with pytest.raises(ValueError, match="differ in key"):
        staleness_update(global_state, [odd])
