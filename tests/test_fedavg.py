import numpy as np
import pytest
import torch

from fedpeft.aggregation import aggregator_names, fedavg, get_aggregator
from fedpeft.errors import FedpeftError


def _states(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "a.lora_A.weight": torch.randn(4, 6, generator=g),
            "head.bias": torch.randn(3, generator=g),
        }
        for _ in range(n)
    ]


def test_fedavg_matches_numpy_weighted_average() -> None:
    states, weights = _states(0, 4), [10.0, 3.0, 7.0, 1.0]
    out = fedavg(list(zip(states, weights, strict=True)))
    for key in states[0]:
        ref = np.average(np.stack([s[key].numpy() for s in states]), axis=0, weights=weights)
        np.testing.assert_allclose(out[key].numpy(), ref, rtol=1e-6, atol=1e-7)


def test_fedavg_is_permutation_invariant_and_keeps_dtype() -> None:
    states, weights = _states(1, 5), [1.0, 2.0, 3.0, 4.0, 5.0]
    pairs = list(zip(states, weights, strict=True))
    a, b = fedavg(pairs), fedavg(pairs[::-1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
        assert a[key].dtype == torch.float32


def test_identical_inputs_give_back_the_input_and_inputs_are_untouched() -> None:
    (state,) = _states(2, 1)
    copy = {k: v.clone() for k, v in state.items()}
    out = fedavg([(state, 3.0), (state, 9.0)])
    for key in state:
        torch.testing.assert_close(out[key], state[key], rtol=0, atol=1e-7)
        assert torch.equal(state[key], copy[key])


def test_fedavg_rejects_empty_or_zero_weights() -> None:
    with pytest.raises(ValueError):
        fedavg([])
    with pytest.raises(ValueError):
        fedavg([(_states(3, 1)[0], 0.0)])


def test_registry_names_and_unknown_name() -> None:
    assert "fedavg" in aggregator_names()
    with pytest.raises(FedpeftError, match="fedavg"):
        get_aggregator("nope")


def test_fedavg_refuses_mismatched_shapes_instead_of_broadcasting() -> None:
    a = {"m.lora_A.weight": torch.ones(4, 6)}
    b = {"m.lora_A.weight": torch.ones(1, 6)}
    with pytest.raises(ValueError, match="in update 1 but .* in update 0; for mixed LoRA ranks"):
        fedavg([(a, 1.0), (b, 1.0)])
