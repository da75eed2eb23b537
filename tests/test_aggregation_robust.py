import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from fedpeft.aggregation import (
    aggregator_names,
    clip_deltas,
    clip_norms,
    coordinate_median,
    fedavg,
    get_aggregator,
    krum,
    multi_krum,
    trimmed_mean,
)
from fedpeft.types import AdapterState

Updates = list[tuple[AdapterState, float]]


def _updates(seed: int, n: int) -> Updates:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            {
                "q.lora_A.weight": torch.randn(3, 4, generator=g),
                "q.lora_B.weight": torch.randn(5, 3, generator=g),
                "head.bias": torch.randn(2, generator=g),
            },
            float(c + 1),
        )
        for c in range(n)
    ]


def _np_stack(updates: Updates, key: str) -> np.ndarray:
    return np.stack([s[key].double().numpy() for s, _ in updates])


def _flat(state: AdapterState) -> np.ndarray:
    return np.concatenate([v.double().numpy().ravel() for v in state.values()])


def _with(updates: Updates, index: int, fill: float) -> Updates:
    """``updates`` with update ``index`` replaced by one full of ``fill`` (NaN, huge)."""
    bad = {k: torch.full_like(v, fill) for k, v in updates[index][0].items()}
    return [(bad, w) if c == index else (s, w) for c, (s, w) in enumerate(updates)]


@pytest.mark.parametrize("n", [5, 6])
def test_coordinate_median_matches_numpy(n: int) -> None:
    updates = _updates(0, n)
    out = coordinate_median(updates)
    for key, value in out.items():
        np.testing.assert_allclose(value.numpy(), np.median(_np_stack(updates, key), axis=0))
        assert value.dtype == torch.float32


@pytest.mark.parametrize(("n", "beta"), [(5, 0.0), (5, 0.2), (10, 0.1), (7, 0.3), (6, 0.49)])
def test_trimmed_mean_matches_scipy(n: int, beta: float) -> None:
    updates = _updates(1, n)
    out = trimmed_mean(updates, trim_fraction=beta, min_trim=0)  # scipy's rule
    for key, value in out.items():
        expected = stats.trim_mean(_np_stack(updates, key), beta, axis=0)
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 20, 30])
def test_trimmed_mean_defaults_trim_one_from_each_side_from_three_clients(n: int) -> None:
    updates = _updates(7, n)
    g = min(max(math.floor(0.1 * n), 1), (n - 1) // 2)  # 0 for n < 3, then ≥ 1
    assert (g >= 1) == (n >= 3)
    for key, value in trimmed_mean(updates).items():
        x = np.sort(_np_stack(updates, key), axis=0)  # reference: drop g from each end
        np.testing.assert_allclose(value.numpy(), x[g : n - g].mean(axis=0), rtol=1e-6, atol=1e-7)
    # invariant: one update ×1000 among 3 no longer moves the default's result off the others
    three = _updates(8, 3)
    big = [({k: v * 1000 for k, v in three[0][0].items()}, 1.0), *three[1:]]
    for key, value in trimmed_mean(big).items():
        lo = torch.minimum(three[1][0][key], three[2][0][key])
        hi = torch.maximum(three[1][0][key], three[2][0][key])
        assert bool(((value >= lo - 1e-6) & (value <= hi + 1e-6)).all())


def test_median_and_trimmed_mean_skip_nan_and_resist_a_huge_update() -> None:
    updates = _updates(2, 5)
    with_nan = _with(updates, 2, math.nan)
    for key, value in coordinate_median(with_nan).items():
        np.testing.assert_allclose(value.numpy(), np.nanmedian(_np_stack(with_nan, key), axis=0))
    for key, value in trimmed_mean(with_nan, trim_fraction=0.2, min_trim=0).items():
        finite = np.delete(_np_stack(updates, key), 2, axis=0)  # 4 finite values: trim 0
        np.testing.assert_allclose(value.numpy(), finite.mean(axis=0), rtol=1e-6, atol=1e-7)
    huge = _with(updates, 0, 1e30)
    for rule in (coordinate_median, lambda u: trimmed_mean(u, trim_fraction=0.2)):
        for bad in (with_nan, huge, _with(updates, 4, math.inf)):
            out = rule(bad)
            assert all(bool(torch.isfinite(v).all()) and v.abs().max() < 10 for v in out.values())


def test_a_coordinate_with_no_finite_value_is_an_error() -> None:
    updates = _with(_with(_updates(3, 2), 0, math.nan), 1, math.nan)
    for rule in (coordinate_median, trimmed_mean):
        with pytest.raises(ValueError, match="NaN or Inf"):
            rule(updates)
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(_updates(3, 2), trim_fraction=0.5)


def _np_krum_scores(updates: Updates, f: int) -> list[float]:
    """Blanchard et al.'s score, by an explicit loop over flattened states."""
    x = [_flat(s) for s, _ in updates]
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: max(1, n - f - 2)]))
    return scores


@pytest.mark.parametrize("f", [0, 1, 2])
def test_krum_and_multi_krum_match_an_explicit_loop(f: int) -> None:
    updates = _updates(4, 7)
    scores = _np_krum_scores(updates, f)
    best = int(np.argmin(scores))
    out = krum(updates, num_byzantine=f)
    for key, value in out.items():
        assert torch.equal(value, updates[best][0][key])
    chosen = np.argsort(scores, kind="stable")[: 7 - f]
    expected = fedavg([updates[i] for i in chosen])
    for key, value in multi_krum(updates, num_byzantine=f).items():
        torch.testing.assert_close(value, expected[key])


def test_krum_never_chooses_a_nan_or_huge_update() -> None:
    updates = _updates(5, 6)
    for bad in (_with(updates, 0, math.nan), _with(updates, 0, 1e30), _with(updates, 0, math.inf)):
        out = krum(bad)
        assert all(bool(torch.isfinite(v).all()) for v in out.values())
        assert not torch.equal(out["head.bias"], bad[0][0]["head.bias"])
        merged = multi_krum(bad)
        expected = fedavg(bad[1:])  # m = n − 1 drops exactly the bad one
        for key, value in merged.items():
            torch.testing.assert_close(value, expected[key])


def test_multi_krum_edge_cases() -> None:
    updates = _updates(6, 5)
    single = multi_krum(updates, m=1)
    for key, value in krum(updates).items():
        torch.testing.assert_close(single[key], value)
    everyone = multi_krum(updates, num_byzantine=0, m=5)
    for key, value in fedavg(updates).items():
        torch.testing.assert_close(everyone[key], value)
    assert krum(updates[:1])["head.bias"].equal(updates[0][0]["head.bias"])
    with pytest.raises(ValueError, match="`m` should be in"):
        multi_krum(updates, m=6)
    with pytest.raises(ValueError, match="num_byzantine"):
        krum(updates, num_byzantine=-1)


def test_clip_norms_bounds_the_norm_and_keeps_the_direction() -> None:
    updates = _updates(7, 4)
    norms = [np.linalg.norm(_flat(s)) for s, _ in updates]
    max_norm = float(np.median(norms))
    copies = [{k: v.clone() for k, v in s.items()} for s, _ in updates]
    out = clip_norms(updates, max_norm)
    for (state, w), (orig, w0), norm in zip(out, updates, norms, strict=True):
        assert w == w0
        np.testing.assert_allclose(
            _flat(state), _flat(orig) * min(1.0, max_norm / norm), rtol=1e-6, atol=1e-7
        )
        assert np.linalg.norm(_flat(state)) <= max_norm * (1 + 1e-6)
    for (state, _), copy in zip(updates, copies, strict=True):
        assert all(torch.equal(state[k], copy[k]) for k in state)
    huge = clip_norms(_with(updates, 0, 1e30), 1.0)[0][0]
    np.testing.assert_allclose(np.linalg.norm(_flat(huge)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="`max_norm` should be positive, got -1"):
        clip_norms(updates, -1)
    with pytest.raises(ValueError, match="update 1 holds NaN"):
        clip_norms(_with(updates, 1, math.nan), 1.0)


def test_clip_deltas_clips_the_change_and_returns_full_states() -> None:
    updates = _updates(8, 3)
    ((global_state, _),) = _updates(9, 1)
    out = clip_deltas(global_state, updates, max_norm=0.5)
    for (state, _), (orig, _) in zip(out, updates, strict=True):
        delta = _flat(orig) - _flat(global_state)
        clipped = delta * min(1.0, 0.5 / np.linalg.norm(delta))
        np.testing.assert_allclose(_flat(state) - _flat(global_state), clipped, atol=1e-6)
        assert all(state[k].dtype == orig[k].dtype for k in state)


Rule = Callable[[Updates], AdapterState]
ROBUST = ["coordinate_median", "trimmed_mean", "krum", "multi_krum"]


@pytest.mark.parametrize("name", ROBUST)
def test_registered_robust_rules_keep_the_invariants(name: str) -> None:
    assert name in aggregator_names()
    rule: Rule = get_aggregator(name)
    updates = _updates(10, 6)
    copies = [{k: v.clone() for k, v in s.items()} for s, _ in updates]
    a, b = rule(updates), rule(updates[::-1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    for (state, _), copy in zip(updates, copies, strict=True):
        assert all(torch.equal(state[k], copy[k]) for k in state)
    same = rule([(updates[0][0], 1.0), (updates[0][0], 3.0), (updates[0][0], 2.0)])
    for key, value in same.items():
        torch.testing.assert_close(value, updates[0][0][key], rtol=0, atol=1e-6)
    for fill in (math.nan, 1e30):
        out = rule(_with(updates, 3, fill))
        assert all(bool(torch.isfinite(v).all()) for v in out.values())
    with pytest.raises(ValueError, match="at least one update"):
        rule([])
