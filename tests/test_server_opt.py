from collections.abc import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from fedpeft.aggregation import FedAdam, FedAvgM, FedYogi, ServerOptimizer
from fedpeft.types import AdapterState


def _state(seed: int) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    return {
        "q.lora_A.weight": torch.randn(3, 4, generator=g),
        "head.bias": torch.randn(2, generator=g),
    }


def _np(state: AdapterState) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in state.items()}


def _two_steps(
    opt: ServerOptimizer, theta: AdapterState, aggs: list[AdapterState]
) -> tuple[AdapterState, AdapterState]:
    opt_state: AdapterState = {}
    for agg in aggs:
        theta, opt_state = opt(theta, agg, opt_state)
        opt_state = load(save(opt_state))  # the state survives a safetensors round trip
    return theta, opt_state


Arrays = dict[str, np.ndarray]


def _np_adaptive(
    theta0: AdapterState,
    aggs: list[AdapterState],
    lr: float,
    b1: float,
    b2: float,
    tau: float,
    yogi: bool,
) -> tuple[Arrays, Arrays, Arrays]:
    """Reddi et al. (2021), Algorithm 2, by hand: m₋₁ = 0, v₋₁ = τ², no bias correction."""
    theta = _np(theta0)
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.full_like(x, tau**2) for k, x in theta.items()}
    for agg in aggs:
        for k, x in _np(agg).items():
            d = x - theta[k]
            m[k] = b1 * m[k] + (1 - b1) * d
            if yogi:
                v[k] = v[k] - (1 - b2) * d**2 * np.sign(v[k] - d**2)
            else:
                v[k] = b2 * v[k] + (1 - b2) * d**2
            theta[k] = theta[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
    return theta, m, v


@pytest.mark.parametrize(("cls", "yogi"), [(FedAdam, False), (FedYogi, True)])
def test_adaptive_optimisers_match_a_hand_computed_reference(
    cls: type[FedAdam] | type[FedYogi], yogi: bool
) -> None:
    theta0, aggs = _state(0), [_state(1), _state(2)]
    opt = cls(server_lr=0.1, beta1=0.8, beta2=0.9, tau=0.01)
    theta, opt_state = _two_steps(opt, theta0, aggs)
    ref, m, v = _np_adaptive(theta0, aggs, 0.1, 0.8, 0.9, 0.01, yogi)
    for key, value in theta.items():
        np.testing.assert_allclose(value.numpy(), ref[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt_state[f"m/{key}"].numpy(), m[key], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(opt_state[f"v/{key}"].numpy(), v[key], rtol=1e-5, atol=1e-7)
        assert value.dtype == theta0[key].dtype


def test_fedyogi_differs_from_fedadam_after_the_first_step() -> None:
    theta0, aggs = _state(3), [_state(4), _state(5)]
    adam, _ = _two_steps(FedAdam(), theta0, aggs)
    yogi, _ = _two_steps(FedYogi(), theta0, aggs)
    assert not torch.allclose(adam["head.bias"], yogi["head.bias"])


def test_fedavgm_matches_a_hand_computed_reference() -> None:
    theta0, aggs = _state(6), [_state(7), _state(8)]
    theta, opt_state = _two_steps(FedAvgM(server_lr=0.5, momentum=0.7), theta0, aggs)
    ref, m = _np(theta0), {k: np.zeros_like(v) for k, v in _np(theta0).items()}
    for agg in aggs:
        for k, x in _np(agg).items():
            m[k] = 0.7 * m[k] + (x - ref[k])
            ref[k] = ref[k] + 0.5 * m[k]
    for key, value in theta.items():
        np.testing.assert_allclose(value.numpy(), ref[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt_state[f"m/{key}"].numpy(), m[key], rtol=1e-5, atol=1e-6)


def test_fedavgm_without_momentum_is_fedavg_and_inputs_are_untouched() -> None:
    theta0, agg = _state(9), _state(10)
    copies = [{k: v.clone() for k, v in s.items()} for s in (theta0, agg)]
    theta, opt_state = FedAvgM(server_lr=1.0, momentum=0.0)(theta0, agg, {})
    for key in agg:
        torch.testing.assert_close(theta[key], agg[key], rtol=0, atol=1e-6)
    for state, copy in zip((theta0, agg), copies, strict=True):
        assert all(torch.equal(state[k], copy[k]) for k in state)
    FedAdam()(theta0, agg, opt_state={})
    assert all(torch.equal(theta0[k], copies[0][k]) for k in theta0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FedAdam(server_lr=-1), "`server_lr` should be positive, got -1."),
        (lambda: FedYogi(tau=0.0), "`tau` should be positive, got 0.0."),
        (lambda: FedAdam(beta1=1.0), r"`beta1` should be in \[0, 1\), got 1.0."),
        (lambda: FedYogi(beta2=-0.1), r"`beta2` should be in \[0, 1\), got -0.1."),
        (lambda: FedAvgM(momentum=1.5), r"`momentum` should be in \[0, 1\), got 1.5."),
        (lambda: FedAvgM(server_lr=float("nan")), "`server_lr` should be positive, got nan."),
    ],
)
def test_hyperparameters_are_checked_when_built(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_mismatched_states_are_errors() -> None:
    theta, agg = _state(11), _state(12)
    with pytest.raises(ValueError, match="differ in key"):
        FedAdam()(theta, {"head.bias": agg["head.bias"]}, {})
    _, adam_state = FedAdam()(theta, agg, {})
    with pytest.raises(ValueError, match="does not use"):
        FedAvgM()(theta, agg, adam_state)
    bad = {**adam_state, "m/head.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="expected"):
        FedAdam()(theta, agg, bad)
