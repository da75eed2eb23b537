"""The baselines' defining server steps on the path a round takes (``lift`` → rule →
``client_view``), HetLoRA's self-pruning through the assigner, and the utility's terms
recomputed by hand from the cost model's prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from fedpeft.aggregation import exact_lora_svd, hetlora_pad
from fedpeft.aggregation.hetero import aggregate_partial, client_view, lift
from fedpeft.allocation import (
    ClientInfo,
    Workload,
    allocate,
    build_problem,
    make_allocation_config,
    make_candidate,
    model_tiers,
)
from fedpeft.allocation.gain import data_scale
from fedpeft.allocation.utility import evaluate
from fedpeft.config import load_config
from fedpeft.config.profiles import DEFAULT_RELATIVE
from fedpeft.data import DataProfile
from fedpeft.models import get_model_spec
from fedpeft.peft import Architecture, architecture
from fedpeft.server.assign import Assigner

A, B = "m.lora_A.weight", "m.lora_B.weight"
OUT, IN = 6, 5


def client_state(rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {A: torch.randn(rank, IN, generator=gen), B: torch.randn(OUT, rank, generator=gen)}


def envelope(rank: int) -> dict[str, torch.Tensor]:
    return {A: torch.zeros(rank, IN), B: torch.zeros(OUT, rank)}


def test_flexlora_clients_start_from_the_best_rank_r_of_the_exact_average() -> None:
    """FlexLoRA (Bai et al., 2024): the server forms ``ΔW = Σ p_c s_c B_c A_c`` exactly and
    a rank-r client starts from its top-r singular directions (Eckart–Young: the error is
    the tail singular values)."""
    gen = torch.Generator().manual_seed(0)
    ranks, ns = [2, 4], [30.0, 10.0]
    states = [client_state(r, gen) for r in ranks]
    env = envelope(4)
    alpha = lambda r: 2.0 * r  # noqa: E731 — each client's α = 2r, so s = α/r = 2
    lifted = [lift(s, env, alpha(r)) for s, r in zip(states, ranks, strict=True)]
    assert torch.equal(lifted[0][A][2:], torch.zeros(2, IN))  # zero rows past the rank
    out = aggregate_partial(list(zip(lifted, ns, strict=True)), env, exact_lora_svd)
    p = np.array(ns) / sum(ns)
    exact = sum(pc * 2.0 * (s[B] @ s[A]).double().numpy() for pc, s in zip(p, states, strict=True))
    sv = np.linalg.svd(exact, compute_uv=False)  # rank 5 > the envelope's 4

    def tail(r: int) -> float:
        return math.sqrt(float(np.sum(sv[r:] ** 2)))

    held = np.linalg.norm(exact - (out[B] @ out[A]).double().numpy())
    assert held == pytest.approx(tail(4), rel=1e-4)  # the envelope keeps the best rank 4
    template = {A: torch.zeros(2, IN), B: torch.zeros(OUT, 2)}
    view = client_view(out, template, alpha(2))
    approx = 2.0 * (view[B] @ view[A]).double().numpy()  # the client's ΔW at its scale
    assert np.linalg.norm(exact - approx) == pytest.approx(tail(2), rel=1e-4)


def test_hetlora_pads_with_zeros_and_weights_by_update_norm() -> None:
    """HetLoRA (Cho et al., 2024): ``A = Σ w_c [A_c; 0]``, ``w_c ∝ n_c‖B_c A_c‖``; the rows
    past a small client's rank come from the larger clients alone, and a rank-r client
    starts from the first r rows and columns."""
    gen = torch.Generator().manual_seed(1)
    ranks, ns = [2, 4], [20.0, 20.0]
    states = [client_state(r, gen) for r in ranks]
    env = envelope(4)
    lifted = [lift(s, env, 2.0 * r) for s, r in zip(states, ranks, strict=True)]
    out = aggregate_partial(list(zip(lifted, ns, strict=True)), env, hetlora_pad)
    norms = [
        n * float(torch.linalg.norm(2.0 * s[B] @ s[A])) for s, n in zip(states, ns, strict=True)
    ]
    w = [x / sum(norms) for x in norms]
    assert torch.allclose(out[A][:2], w[0] * states[0][A] + w[1] * states[1][A][:2], atol=1e-6)
    assert torch.allclose(out[A][2:], w[1] * states[1][A][2:], atol=1e-6)
    assert torch.allclose(out[B][:, 2:], w[1] * 2.0 * states[1][B][:, 2:], atol=1e-6)
    view = client_view(out, {A: torch.zeros(2, IN), B: torch.zeros(OUT, 2)}, 4.0)
    assert torch.equal(view[A], out[A][:2]) and torch.allclose(view[B], out[B][:, :2] / 2.0)


def test_the_assigner_self_prunes_hetlora_ranks_from_returned_factors() -> None:
    """A client whose tail rank components carry almost no energy is capped at ⌈γr⌉ in
    the next round's allocation; a busy client keeps its rank; other policies never prune."""
    cfg = load_config(overrides=["allocation.enabled=true", "allocation.policy='hetlora'"])
    assigner = Assigner(cfg, None)
    gen = torch.Generator().manual_seed(2)
    busy = client_state(16, gen)
    idle = {A: busy[A].clone(), B: busy[B].clone()}
    idle[B][:, 8:] *= 1e-3  # the tail barely moves
    r16 = make_candidate("lora", {"r": 16, "alpha": 32.0}, "lora-r16-all")
    assigner.observe_updates({0: (r16, busy), 1: (r16, idle)})
    assert assigner.estimator.client_ranks == {1: 8}
    other = Assigner(load_config(overrides=["allocation.enabled=true"]), None)
    other.observe_updates({1: (r16, idle)})
    assert other.estimator.client_ranks == {}


@pytest.fixture(scope="module")
def minilm() -> Architecture:
    path = get_model_spec("minilm-l6").local_path()
    assert path is not None
    return architecture(AutoConfig.from_pretrained(str(path)), 2)


def test_utility_terms_match_a_hand_computation(minilm: Architecture) -> None:
    """``U = αR − βC + γE`` with ``R = prior·κ·d·(s/S)^w``, ``C`` the weighted mean of
    τ, μ, χ, ε, ``E`` the coverage — each recomputed from the cost model's prediction."""
    deadline = 60.0
    tiers = model_tiers(minilm, Workload(16, 48, 6, 24), deadline, DEFAULT_RELATIVE, rank=16)
    data = DataProfile(96, [48, 48], 1.0, 24.0)
    raw = {
        "deadline_s": deadline,
        "enabled": True,
        "policy": "utility",
        "alpha": 1.0,
        "beta": 0.7,
        "gamma": 0.3,
    }
    raw |= {"cost_weights": {"time": 1.0, "memory": 2.0, "bytes": 0.5, "risk": 1.5}}
    cfg = make_allocation_config(raw)
    clients = [
        ClientInfo(i, tiers[t], Workload(16, 48, 6, 24), data) for i, t in enumerate(["mid", "low"])
    ]
    problem = build_problem(minilm, cfg, round=1, seed=0)
    a = allocate(problem, clients)[0]
    ev = a.chosen_evaluation
    assert a.chosen is not None and a.terms is not None and ev is not None
    floor = max(  # T_floor: the slowest client's fastest feasible option
        min(
            e.cost.round_seconds
            for c in problem.catalogue
            if (e := evaluate(problem, c, x, True)).feasible
        )
        for x in clients
    )
    cost = ev.cost
    tau = max(0.0, cost.round_seconds - floor) / deadline
    mu = cost.memory_bytes / tiers["mid"].memory_bytes
    chi = cost.transfer_seconds / deadline
    z = (math.log(cost.round_seconds) - math.log(deadline)) / cfg.time_error
    eps = 0.5 * math.erfc(-z / math.sqrt(2))
    c = (1.0 * tau + 2.0 * mu + 0.5 * chi + 1.5 * eps) / 5.0
    parts = a.terms.parts
    assert [parts[f"C.{k}"] for k in ("time", "memory", "bytes", "risk")] == pytest.approx(
        [tau, mu, chi, eps]
    )
    assert pytest.approx(c) == a.terms.C
    kappa = problem.capacity[a.chosen.name]
    d = data_scale(data, cfg.gain.half_examples)
    assert parts["R.credit"] == 0.0 and parts["R.work"] == 1.0  # fresh estimator, full steps
    assert (parts["R.capacity"], parts["R.data"]) == pytest.approx((kappa, d))
    assert pytest.approx(a.chosen.spec.gain_prior * kappa * d) == a.terms.R
    blocks = len(a.chosen.spec.targets(minilm)) // 2  # q and v per block
    e = (blocks + 1) / (minilm.layers + 1)  # the adapted blocks and the task head
    assert pytest.approx(e) == a.terms.E
    assert pytest.approx(1.0 * a.terms.R - 0.7 * c + 0.3 * e) == a.terms.U
    assert f"highest U = {a.terms.U:.3f}" in a.reason
