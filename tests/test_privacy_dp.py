"""Client-level DP: clipping bounds each client's influence, the noise has the right scale,
adaptive clipping follows Andrew et al. (checked against Flower's helper)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedpeft.privacy import (
    add_noise,
    clip_delta,
    delta,
    delta_noise_multiplier,
    dp_fedavg,
    gaussian_noise,
    l2_norm,
    next_clip_norm,
    noisy_unclipped_fraction,
    privatize_local,
)


def _state(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "a.lora_A": torch.randn(4, 8, generator=gen) * scale,
        "a.lora_B": torch.randn(8, 4, generator=gen) * scale,
        "head.bias": torch.randn(3, generator=gen) * scale,
    }


ALPHA = 1e-4  # false-alarm rate of each statistical test (the draws are seeded, so fixed)


def _variance_p_value(x: np.ndarray, std: float) -> float:
    """Two-sided p-value of ``(n − 1) s² / σ² ~ χ²(n − 1)`` (zero-mean Gaussian samples)."""
    n = x.size
    statistic = float((x**2).sum()) / std**2  # known mean 0: χ²(n)
    cdf = stats.chi2.cdf(statistic, df=n)
    return 2 * min(cdf, 1 - cdf)


def test_clip_delta_bounds_the_norm_and_keeps_small_deltas() -> None:
    gen = torch.Generator().manual_seed(0)
    big = _state(gen, scale=10.0)
    clipped = clip_delta(big, 1.5)
    assert l2_norm(clipped) == pytest.approx(1.5, rel=1e-12)
    # the direction is kept: clipped = big · S/‖big‖
    scale = 1.5 / l2_norm(big)
    for k, v in big.items():
        torch.testing.assert_close(clipped[k], v.double() * scale)
    small = _state(gen, scale=0.01)
    assert all(torch.equal(clip_delta(small, 1.5)[k], v.double()) for k, v in small.items())


def test_noise_has_the_right_scale_over_many_draws() -> None:
    """σ·S per coordinate: χ² test of the variance and a KS test of the shape."""
    gen = torch.Generator().manual_seed(1)
    like = {"w": torch.zeros(200, 100), "b": torch.zeros(1000)}
    std = 0.7 * 2.0
    noise = gaussian_noise(like, std, gen)
    x = torch.cat([v.reshape(-1) for v in noise.values()]).numpy()
    assert _variance_p_value(x, std) > ALPHA
    assert stats.kstest(x / std, "norm").pvalue > ALPHA
    assert abs(x.mean()) < 4 * std / math.sqrt(x.size)
    # a wrong scale is caught by the same test (the test can fail)
    assert _variance_p_value(x, std * 1.05) < 1e-6


def test_dp_fedavg_noise_on_the_mean_is_sigma_s_over_m() -> None:
    """With every delta zero, θ' − θ_s is the noise alone: N(0, (σS/m)²) per coordinate."""
    gen = torch.Generator().manual_seed(2)
    served = {"w": torch.zeros(50_000, dtype=torch.float64)}
    sigma, s, m = 1.3, 0.5, 8
    out, report = dp_fedavg(served, [dict(served)] * m, s, sigma, gen)
    assert report.clipped == 0 and report.norms == [0.0] * m
    assert _variance_p_value(out["w"].numpy(), sigma * s / m) > ALPHA


def test_dp_fedavg_without_noise_is_the_mean_of_clipped_deltas() -> None:
    """Independent reference: numpy's mean of the clipped deltas, flattened."""
    gen = torch.Generator().manual_seed(3)
    served = _state(gen)
    states = [
        {k: v + torch.randn(v.shape, generator=gen) * c for k, v in served.items()}
        for c in (0.01, 1.0, 5.0)
    ]
    out, report = dp_fedavg(served, states, 1.0, 0.0, gen)
    keys = sorted(served)
    flat = lambda s: np.concatenate([s[k].double().numpy().ravel() for k in keys])  # noqa: E731
    deltas = [flat(s) - flat(served) for s in states]
    clipped = [d * min(1.0, 1.0 / np.linalg.norm(d)) for d in deltas]
    expected = flat(served) + np.mean(clipped, axis=0)
    np.testing.assert_allclose(flat(out), expected, rtol=1e-6, atol=1e-6)  # float32 out
    assert report.clipped == 2 and report.norms[0] < 1.0
    assert all(out[k].dtype == served[k].dtype for k in keys)


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(1e-3, 1e4),
    clip=st.floats(0.01, 10.0),
    m=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_one_client_moves_the_noisy_mean_by_at_most_s_over_m(
    scale: float, clip: float, m: int, seed: int
) -> None:
    """Sensitivity: with the same noise, adding any client changes the sum by ≤ S."""
    gen = torch.Generator().manual_seed(seed)
    served = _state(gen)
    others = [
        {k: v + torch.randn(v.shape, generator=gen) for k, v in served.items()}
        for _ in range(m - 1)
    ]
    outlier = {k: v + torch.randn(v.shape, generator=gen) * scale for k, v in served.items()}
    with_c, _ = dp_fedavg(
        served, [*others, outlier], clip, 1.0, torch.Generator().manual_seed(9), m
    )
    without, _ = dp_fedavg(served, others, clip, 1.0, torch.Generator().manual_seed(9), m)
    moved = l2_norm(delta(with_c, without))
    assert moved <= clip / m * (1 + 1e-5) + 1e-5  # float32 rounding of the outputs


def test_noise_is_seeded_and_inputs_are_untouched() -> None:
    gen = torch.Generator().manual_seed(4)
    served = _state(gen)
    states = [_state(gen) for _ in range(3)]
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    a, _ = dp_fedavg(served, states, 1.0, 1.0, torch.Generator().manual_seed(7))
    b, _ = dp_fedavg(served, states, 1.0, 1.0, torch.Generator().manual_seed(7))
    c, _ = dp_fedavg(served, states, 1.0, 1.0, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(s[k], o[k]) for s, o in zip(states, before, strict=True) for k in s)


def test_frozen_keys_get_no_noise() -> None:
    gen = torch.Generator().manual_seed(5)
    served = _state(gen)
    out, _ = dp_fedavg(served, [served, served], 1.0, 5.0, gen, frozen=("lora_A",))
    assert torch.equal(out["a.lora_A"], served["a.lora_A"])
    assert not torch.equal(out["a.lora_B"], served["a.lora_B"])


def test_stored_values_of_a_seeded_draw() -> None:
    """The first draws of N(0, 0.5²) from seed 0 (torch's CPU generator)."""
    noise = gaussian_noise({"w": torch.zeros(3)}, 0.5, torch.Generator().manual_seed(0))["w"]
    expected = 0.5 * torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise, expected)
    torch.testing.assert_close(
        noise,
        torch.tensor([0.7704980541, -0.1467144529, -1.0893946910], dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )


def test_local_dp_clips_then_adds_noise_on_the_client() -> None:
    gen = torch.Generator().manual_seed(6)
    d = {"w": torch.full((40_000,), 3.0)}
    out = privatize_local(d, 2.0, 0.8, torch.Generator().manual_seed(1))
    clipped = clip_delta(d, 2.0)["w"]
    assert _variance_p_value((out["w"] - clipped).numpy(), 0.8 * 2.0) > ALPHA
    again = add_noise(clip_delta(d, 2.0), 1.6, torch.Generator().manual_seed(1))
    assert torch.equal(out["w"], again["w"])
    del gen


def test_adaptive_noise_split_matches_flower() -> None:
    """σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½): Flower's ``compute_adaptive_noise_params`` agrees."""
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    for sigma, m in [(1.0, 100), (0.5, 20), (2.0, 1000)]:
        sigma_b = m / 20
        _, flower_sigma = compute_adaptive_noise_params(sigma, m, sigma_b)
        assert delta_noise_multiplier(sigma, sigma_b) == pytest.approx(flower_sigma, rel=1e-12)
        # the invariant: the two mechanisms together are one with multiplier σ
        z = delta_noise_multiplier(sigma, sigma_b)
        assert (z**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(sigma, rel=1e-12)
    with pytest.raises(ValueError, match="must exceed"):
        delta_noise_multiplier(1.0, 0.4)


def test_adaptive_clip_norm_converges_to_the_target_quantile() -> None:
    """Without count noise, S follows the γ-quantile of a fixed norm distribution."""
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    clip, gamma = 100.0, 0.3
    for _ in range(600):
        norms = rng.lognormal(0.0, 0.5, size=50).tolist()
        frac = noisy_unclipped_fraction(norms, clip, 0.0, gen)
        assert frac == sum(n <= clip for n in norms) / 50
        clip = next_clip_norm(clip, frac, gamma, 0.2)
    quantile = float(np.exp(stats.norm.ppf(gamma) * 0.5))  # the lognormal's 0.3-quantile
    assert clip == pytest.approx(quantile, rel=0.15)
    assert next_clip_norm(2.0, 0.7, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.2 * 0.2))


def test_noisy_count_has_scale_sigma_b() -> None:
    gen = torch.Generator().manual_seed(3)
    draws = np.array([noisy_unclipped_fraction([0.0] * 10, 1.0, 2.0, gen) for _ in range(4000)])
    assert _variance_p_value((draws - 1.0) * 10, 2.0) > ALPHA
