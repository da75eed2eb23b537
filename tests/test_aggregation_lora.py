from collections.abc import Callable

import numpy as np
import pytest
import torch

from fedpeft.aggregation import (
    exact_lora_svd,
    fedavg,
    ffa_lora,
    hetlora_pad,
    lora_pairs,
    lora_product,
    stack_lora,
    svd_redistribute,
    truncate_rank,
    weighted_lora,
)
from fedpeft.types import AdapterState

Q = "base_model.model.bert.encoder.layer.0.attention.self.query"
V = "base_model.model.bert.encoder.layer.0.attention.self.value"
HEAD = "base_model.model.classifier"
OUT, IN = 5, 7


def _state(g: torch.Generator, rank: int, shared_a: AdapterState | None = None) -> AdapterState:
    state = {
        f"{HEAD}.bias": torch.randn(3, generator=g),
        f"{Q}.lora_A.weight": torch.randn(rank, IN, generator=g),
        f"{Q}.lora_B.weight": torch.randn(OUT, rank, generator=g),
        f"{V}.lora_A.weight": torch.randn(rank, IN, generator=g),
        f"{V}.lora_B.weight": torch.randn(OUT, rank, generator=g),
        f"{HEAD}.weight": torch.randn(3, IN, generator=g),
    }
    if shared_a is not None:
        state.update({k: v for k, v in shared_a.items() if "lora_A" in k})
    return state


def _updates(
    seed: int, ranks: list[int], shared_a: bool = False
) -> list[tuple[AdapterState, float]]:
    g = torch.Generator().manual_seed(seed)
    first = _state(g, ranks[0])
    states = [first] + [_state(g, r, first if shared_a else None) for r in ranks[1:]]
    weights = [float(w) for w in torch.randint(1, 50, (len(ranks),), generator=g)]
    return list(zip(states, weights, strict=True))


def _np_product(updates: list[tuple[AdapterState, float]], module: str) -> np.ndarray:
    """The explicit loop: Σ_c p_c B_c A_c, in numpy float64."""
    total = sum(w for _, w in updates)
    out = np.zeros((OUT, IN))
    for state, w in updates:
        b = state[f"{module}.lora_B.weight"].double().numpy()
        a = state[f"{module}.lora_A.weight"].double().numpy()
        out += (w / total) * b @ a
    return out


def _ba(state: AdapterState, module: str) -> np.ndarray:
    a = state[f"{module}.lora_A.weight"].double().numpy()
    return state[f"{module}.lora_B.weight"].double().numpy() @ a


def _copy(updates: list[tuple[AdapterState, float]]) -> list[AdapterState]:
    return [{k: v.clone() for k, v in s.items()} for s, _ in updates]


def _untouched(updates: list[tuple[AdapterState, float]], copies: list[AdapterState]) -> None:
    for (state, _), copy in zip(updates, copies, strict=True):
        assert state.keys() == copy.keys()
        for key in state:
            assert torch.equal(state[key], copy[key])


def test_lora_pairs_pairs_a_with_b_and_rejects_orphans() -> None:
    ((state, _),) = _updates(0, [2])
    assert lora_pairs(state) == [
        (f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"),
        (f"{V}.lora_A.weight", f"{V}.lora_B.weight"),
    ]
    orphan = {k: v for k, v in state.items() if k != f"{V}.lora_A.weight"}
    with pytest.raises(ValueError, match="no partner"):
        lora_pairs(orphan)


def test_weighted_lora_is_fedavg_and_matches_numpy() -> None:
    updates = _updates(1, [3, 3, 3, 3])
    out, ref = weighted_lora(updates), fedavg(updates)
    weights = [w for _, w in updates]
    for key, value in out.items():
        expected = np.average(
            np.stack([s[key].numpy() for s, _ in updates]), axis=0, weights=weights
        )
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(value, ref[key])
    with pytest.raises(ValueError, match="mixed LoRA ranks"):
        weighted_lora(_updates(1, [2, 3]))


def test_lora_product_matches_an_explicit_loop_with_mixed_ranks() -> None:
    updates = _updates(2, [1, 2, 4])
    out = lora_product(updates)
    assert set(out) == {Q, V}
    for module in (Q, V):
        np.testing.assert_allclose(out[module].numpy(), _np_product(updates, module), atol=1e-5)


def test_separate_averaging_is_not_the_exact_average() -> None:
    updates = _updates(3, [2, 2, 2])
    separate = weighted_lora(updates)
    exact = _np_product(updates, Q)
    error = np.linalg.norm(_ba(separate, Q) - exact) / np.linalg.norm(exact)
    assert error > 0.05  # the cross terms p_c p_k B_c A_k, c ≠ k


def test_exact_lora_svd_is_exact_when_all_clients_share_a() -> None:
    updates = _updates(4, [3, 3, 3], shared_a=True)
    out = exact_lora_svd(updates)
    for module in (Q, V):
        np.testing.assert_allclose(_ba(out, module), _np_product(updates, module), atol=1e-5)
    for key, value in updates[0][0].items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype
    np.testing.assert_allclose(
        out[f"{HEAD}.weight"].numpy(), fedavg(updates)[f"{HEAD}.weight"].numpy(), atol=1e-7
    )


def test_exact_lora_svd_is_exact_with_the_stacked_rank_and_else_the_best_rank_r() -> None:
    updates = _updates(5, [2, 2])
    full = exact_lora_svd(updates, rank=4)
    assert full[f"{Q}.lora_A.weight"].shape == (4, IN)
    np.testing.assert_allclose(_ba(full, Q), _np_product(updates, Q), atol=1e-5)
    low = exact_lora_svd(updates)  # rank 2: Eckart–Young's error is the tail singular values
    exact = _np_product(updates, Q)
    tail = np.linalg.svd(exact, compute_uv=False)[2:]
    error = np.linalg.norm(_ba(low, Q) - exact)
    np.testing.assert_allclose(error, np.sqrt((tail**2).sum()), rtol=1e-4)
    with pytest.raises(ValueError, match="`rank` should be positive"):
        exact_lora_svd(updates, rank=0)


def test_exact_lora_svd_when_the_stacked_rank_exceeds_the_output_size() -> None:
    updates = _updates(15, [2, 2, 2])  # Σ r_c = 6 > OUT = 5: the average has full rank 5
    out = exact_lora_svd(updates, rank=6)
    assert out[f"{Q}.lora_B.weight"].shape == (OUT, 6)
    np.testing.assert_allclose(_ba(out, Q), _np_product(updates, Q), atol=1e-5)
    zero_b = [
        ({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in s.items()}, w)
        for s, w in updates
    ]
    dead = exact_lora_svd(zero_b)  # documented: a zero average gives zero factors, not NaN
    assert all(bool((v == 0).all()) for k, v in dead.items() if "lora_" in k)


def test_stack_lora_is_exact_for_mixed_ranks() -> None:
    updates = _updates(6, [1, 3, 2])
    out = stack_lora(updates)
    assert out[f"{Q}.lora_A.weight"].shape == (6, IN)
    assert out[f"{Q}.lora_B.weight"].shape == (OUT, 6)
    for module in (Q, V):
        np.testing.assert_allclose(_ba(out, module), _np_product(updates, module), atol=1e-5)


def test_ffa_lora_averages_b_keeps_the_shared_a_and_refuses_different_a() -> None:
    updates = _updates(7, [2, 2, 2], shared_a=True)
    out = ffa_lora(updates)
    weights = [w for _, w in updates]
    key_b = f"{Q}.lora_B.weight"
    expected = np.average(np.stack([s[key_b].numpy() for s, _ in updates]), axis=0, weights=weights)
    np.testing.assert_allclose(out[key_b].numpy(), expected, atol=1e-6)
    assert torch.equal(out[f"{Q}.lora_A.weight"], updates[0][0][f"{Q}.lora_A.weight"])
    np.testing.assert_allclose(_ba(out, Q), _np_product(updates, Q), atol=1e-5)
    with pytest.raises(ValueError, match="frozen A"):
        ffa_lora(_updates(7, [2, 2]))


def test_hetlora_pad_matches_an_explicit_loop_with_norm_weights() -> None:
    updates = _updates(8, [1, 4, 2])
    out = hetlora_pad(updates)
    for module in (Q, V):
        raw = [w * np.linalg.norm(_ba(s, module)) for s, w in updates]
        weights = [x / sum(raw) for x in raw]
        a_ref, b_ref = np.zeros((4, IN)), np.zeros((OUT, 4))
        for wc, (state, _) in zip(weights, updates, strict=True):
            a = state[f"{module}.lora_A.weight"].double().numpy()
            b = state[f"{module}.lora_B.weight"].double().numpy()
            a_ref[: a.shape[0]] += wc * a
            b_ref[:, : b.shape[1]] += wc * b
        np.testing.assert_allclose(out[f"{module}.lora_A.weight"].numpy(), a_ref, atol=1e-6)
        np.testing.assert_allclose(out[f"{module}.lora_B.weight"].numpy(), b_ref, atol=1e-6)
    assert hetlora_pad(updates, max_rank=6)[f"{Q}.lora_A.weight"].shape == (6, IN)
    with pytest.raises(ValueError, match="max_rank"):
        hetlora_pad(updates, max_rank=3)


def test_hetlora_pad_falls_back_to_example_weights_when_every_b_is_zero() -> None:
    updates = [
        ({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in s.items()}, w)
        for s, w in _updates(9, [2, 2])
    ]
    out = hetlora_pad(updates)
    key_a = f"{Q}.lora_A.weight"
    torch.testing.assert_close(out[key_a], fedavg(updates)[key_a])


def test_truncate_rank_gives_each_client_its_slice() -> None:
    ((state, _),) = _updates(10, [4])
    out = truncate_rank(state, 2)
    assert torch.equal(out[f"{Q}.lora_A.weight"], state[f"{Q}.lora_A.weight"][:2])
    assert torch.equal(out[f"{Q}.lora_B.weight"], state[f"{Q}.lora_B.weight"][:, :2])
    assert torch.equal(out[f"{HEAD}.bias"], state[f"{HEAD}.bias"])
    with pytest.raises(ValueError, match="`rank` should be in"):
        truncate_rank(state, 5)


def test_svd_redistribute_gives_the_best_rank_r_approximation() -> None:
    ((state, _),) = _updates(11, [4])
    exact = _ba(state, Q)
    u, s, vh = np.linalg.svd(exact, full_matrices=False)
    out = svd_redistribute(state, 2)
    assert out[f"{Q}.lora_A.weight"].shape == (2, IN)
    np.testing.assert_allclose(_ba(out, Q), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
    np.testing.assert_allclose(_ba(svd_redistribute(state, 4), Q), exact, atol=1e-5)
    np.testing.assert_allclose(_ba(svd_redistribute(state, 9), Q), exact, atol=1e-5)


Rule = Callable[[list[tuple[AdapterState, float]]], AdapterState]
RULES: list[tuple[str, Rule]] = [
    ("weighted_lora", weighted_lora),
    ("exact_lora_svd", exact_lora_svd),
    ("stack_lora", stack_lora),
    ("ffa_lora", ffa_lora),
    ("hetlora_pad", hetlora_pad),
]


@pytest.mark.parametrize(("name", "rule"), RULES)
def test_rules_are_permutation_invariant_and_leave_inputs_untouched(name: str, rule: Rule) -> None:
    updates = _updates(12, [3, 3, 3, 3], shared_a=name == "ffa_lora")
    copies = _copy(updates)
    a, b = rule(updates), rule(updates[::-1])
    _untouched(updates, copies)
    for module in (Q, V):  # factors may differ (SVD signs, stacking order); the product may not
        np.testing.assert_allclose(_ba(a, module), _ba(b, module), atol=1e-5)
    for key in (f"{HEAD}.weight", f"{HEAD}.bias"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "rule"), RULES)
def test_identical_inputs_give_back_the_input(name: str, rule: Rule) -> None:
    ((state, _),) = _updates(13, [3])
    out = rule([(state, 2.0), (state, 5.0)])
    for module in (Q, V):
        np.testing.assert_allclose(_ba(out, module), _ba(state, module), atol=1e-5)
    for key in state:
        if name not in ("exact_lora_svd", "stack_lora"):  # these refactor or widen the factors
            torch.testing.assert_close(out[key], state[key], rtol=0, atol=1e-6)
        assert out[key].dtype == state[key].dtype


def test_rules_reject_empty_bad_weights_and_mismatched_keys() -> None:
    updates = _updates(14, [2, 2])
    for _, rule in RULES:
        with pytest.raises(ValueError, match="at least one update"):
            rule([])
        with pytest.raises(ValueError, match="weights"):
            rule([(updates[0][0], -1.0), (updates[1][0], 2.0)])
    partial = {k: v for k, v in updates[1][0].items() if k != f"{HEAD}.bias"}
    with pytest.raises(ValueError, match="differ in key"):
        exact_lora_svd([updates[0], (partial, 1.0)])


CONV = "base_model.model.backbone._blocks.1._expand_conv"


def _conv_state(g: torch.Generator, rank: int) -> AdapterState:
    """peft's LoRA of a 3×3 convolution: A a (r, in, 3, 3) kernel, B a 1×1 (out, r, 1, 1)."""
    return {
        f"{CONV}.lora_A.weight": torch.randn(rank, 4, 3, 3, generator=g),
        f"{CONV}.lora_B.weight": torch.randn(6, rank, 1, 1, generator=g),
        f"{HEAD}.weight": torch.randn(3, 6, generator=g),
    }


def _conv_delta(state: AdapterState) -> torch.Tensor:
    a, b = state[f"{CONV}.lora_A.weight"], state[f"{CONV}.lora_B.weight"]
    return (b.flatten(1).double() @ a.flatten(1).double()).reshape(6, 4, 3, 3)


def test_convolution_lora_is_aggregated_over_its_flattened_kernel() -> None:
    """Found in the full study: every round of EfficientNet-Lite0 under `exact_lora_svd` failed
    ("not 2-D") and the run kept its initial adapter. Each LoRA rule now reads a conv LoRA as
    the matrices B (out, r) · A (r, in·kh·kw) and gives the results their kernel shapes back."""
    g = torch.Generator().manual_seed(0)
    updates = [(_conv_state(g, 2), 1.0), (_conv_state(g, 2), 3.0)]
    exact = 0.25 * _conv_delta(updates[0][0]) + 0.75 * _conv_delta(updates[1][0])
    for rule, rank in ((exact_lora_svd, 4), (stack_lora, 4)):  # rank ≥ Σ r_c: exact
        out = rule(updates, rank) if rule is exact_lora_svd else rule(updates)
        assert out[f"{CONV}.lora_A.weight"].shape == (rank, 4, 3, 3)
        assert out[f"{CONV}.lora_B.weight"].shape == (6, rank, 1, 1)
        torch.testing.assert_close(_conv_delta(out), exact, rtol=1e-5, atol=1e-5)
    same = exact_lora_svd(updates)  # the rank kept: the state's shapes kept
    assert {k: v.shape for k, v in same.items()} == {k: v.shape for k, v in updates[0][0].items()}
    (delta,) = lora_product(updates).values()
    torch.testing.assert_close(delta.double(), exact, rtol=1e-5, atol=1e-5)
    padded = hetlora_pad(updates, max_rank=3)
    assert padded[f"{CONV}.lora_B.weight"].shape == (6, 3, 1, 1)
    small = svd_redistribute(updates[0][0], 1)
    assert small[f"{CONV}.lora_A.weight"].shape == (1, 4, 3, 3)
    bad = dict(updates[0][0], **{f"{CONV}.lora_B.weight": torch.zeros(6, 2, 3, 3)})
    with pytest.raises(ValueError, match="are not"):
        exact_lora_svd([(bad, 1.0)])
