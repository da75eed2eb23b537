"""The reworked utility (step adaptation, deadline risk, round-aware time, E by coverage)
and the published baselines as policies, on MiniLM's shape with model-relative tiers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from fedpeft.allocation import (
    ClientInfo,
    Workload,
    allocate,
    build_problem,
    coverage,
    deadline_risk,
    evaluate,
    make_allocation_config,
    model_tiers,
    pruned_ranks,
    tail_share,
)
from fedpeft.allocation.baselines import fedra_rank, reachable_blocks
from fedpeft.config.profiles import DEFAULT_RELATIVE
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec
from fedpeft.peft import Architecture, architecture

DEADLINE = 60.0
DATA = DataProfile(96, [48, 48], 1.0, 24.0)


@pytest.fixture(scope="module")
def minilm() -> Architecture:
    path = get_model_spec("minilm-l6").local_path()
    assert path is not None
    return architecture(AutoConfig.from_pretrained(str(path)), 2)


@pytest.fixture(scope="module")
def tiers(minilm: Architecture) -> dict:
    return model_tiers(minilm, Workload(16, 48, 6, 24), DEADLINE, DEFAULT_RELATIVE, rank=16)


def client(tiers: dict, i: int, tier: str, steps: int = 6) -> ClientInfo:
    return ClientInfo(i, tiers[tier], Workload(16, 48, steps, 24), DATA)


def problem(arch: Architecture, **raw: object):  # type: ignore[no-untyped-def]
    cfg = make_allocation_config(
        {"deadline_s": DEADLINE, "enabled": True, "policy": "utility"} | raw
    )
    return build_problem(arch, cfg, round=1, seed=0)


def test_deadline_risk_is_a_lognormal_tail() -> None:
    assert deadline_risk(60.0, 60.0, 0.1) == pytest.approx(0.5)
    assert deadline_risk(60.0 * math.exp(-0.1), 60.0, 0.1) == pytest.approx(0.158655, abs=1e-6)
    assert deadline_risk(0.0, 60.0, 0.1) == 0.0


def test_utility_keeps_every_tier_in_one_envelope(minilm: Architecture, tiers: dict) -> None:
    """High trains every block, mid at most half, low only the top block — all LoRA."""
    clients = [client(tiers, 0, "high"), client(tiers, 1, "mid"), client(tiers, 2, "low")]
    out = allocate(problem(minilm), clients)
    blocks = [len(a.chosen.spec.targets(minilm)) // 2 for a in out if a.chosen]
    assert blocks == [6, 3, 1] and {a.chosen.method for a in out if a.chosen} == {"lora"}


def test_shared_depth_gives_every_tier_the_deepest_blocks_all_can_hold(
    minilm: Architecture, tiers: dict
) -> None:
    """With ``shared_depth`` every client of the round trains the same top blocks: the
    deepest the weakest present can hold; each still picks its own rank."""
    high, mid, low = client(tiers, 0, "high"), client(tiers, 1, "mid"), client(tiers, 2, "low")
    for clients, depth in (([high, mid, low], 1), ([high, mid], 3), ([high], 6)):
        out = allocate(problem(minilm, shared_depth=True), clients)
        assert all(a.chosen is not None for a in out)
        assert [len(a.chosen.spec.targets(minilm)) // 2 for a in out] == [depth] * len(out)
        assert all(f"top {depth} block" in a.reason for a in out)
        assert {ev.candidate.name for ev in out[0].evaluations} == {
            f"lora-r{r}-{'all' if depth == 6 else f'top{depth}'}" for r in (4, 8, 16)
        }
    # a client no depth fits does not pull the others down to nothing
    tiny = ClientInfo(3, tiers["low"].model_copy(update={"memory_bytes": 1}), low.workload, DATA)
    out = allocate(problem(minilm, shared_depth=True), [high, mid, tiny])
    assert [len(a.chosen.spec.targets(minilm)) // 2 if a.chosen else 0 for a in out] == [3, 3, 0]
    with pytest.raises(FedpeftError, match="shared_depth"):
        make_allocation_config({"policy": "uniform_fit", "shared_depth": True})


def test_depth_gate_caps_lora_above_the_first_depth_whose_trainers_labels_stray(
    minilm: Architecture, tiers: dict
) -> None:
    """``depth_gate_tv``: the deep tier holds one class, the weak tier the other. Pooled,
    the clients on ≥ 2 (and ≥ 3) blocks are 0.25 from the round's labels in total
    variation, those on ≥ 4 blocks 0.5; the gate caps everyone above the first depth past it."""
    labels = {"high": [40, 0], "mid": [20, 20], "low": [0, 40]}
    clients = [
        ClientInfo(i, tiers[t], Workload(16, 48, 6, 24), DataProfile(40, labels[t], 1.0, 24.0))
        for i, t in enumerate(("high", "mid", "low"))
    ]

    def blocks(gate: float | None) -> list[int]:
        out = allocate(problem(minilm, depth_gate_tv=gate), clients)
        assert all(a.chosen is not None for a in out)
        return [len(a.chosen.spec.targets(minilm)) // 2 for a in out if a.chosen]

    assert blocks(None) == blocks(0.0) == blocks(0.6) == [6, 3, 1]  # 0 turns it off (TOML)
    assert blocks(0.3) == [3, 3, 1]
    assert blocks(0.2) == [1, 1, 1]
    out = allocate(problem(minilm, depth_gate_tv=0.3), clients)
    assert all("capped at the top 3 block(s)" in a.reason and "0.50" in a.reason for a in out)
    unknown = [*clients[:2], ClientInfo(2, tiers["low"], clients[2].workload, None)]
    out = allocate(problem(minilm, depth_gate_tv=0.2), unknown)  # no histogram: no gate
    assert [len(a.chosen.spec.targets(minilm)) // 2 for a in out if a.chosen] == [6, 3, 1]
    # the other policies ignore it, so a config written out whole (Flower, resume) reloads
    fixed_out = allocate(problem(minilm, policy="uniform_fit", depth_gate_tv=0.3), clients)
    assert [len(a.chosen.spec.targets(minilm)) // 2 for a in fixed_out if a.chosen] == [1, 1, 1]
    assert not any("capped" in a.reason for a in fixed_out)


def test_client_gate_caps_each_client_whose_own_labels_stray_at_the_shallowest_depth(
    minilm: Architecture, tiers: dict
) -> None:
    """``client_gate_tv``: each client's own labels against the round's. The high tier holds
    one class (0.5 from the round's), the mid tier both (0): the high tier is capped at the
    top block, the mid tier keeps its three — the pooled gate (off here) would cap both."""
    labels = {"high": [40, 0], "mid": [20, 20], "low": [0, 40]}
    clients = [
        ClientInfo(i, tiers[t], Workload(16, 48, 6, 24), DataProfile(40, labels[t], 1.0, 24.0))
        for i, t in enumerate(("high", "mid", "low"))
    ]

    def run(gate: float | None, pooled: float | None = 0, **kw: object) -> list:
        return allocate(problem(minilm, depth_gate_tv=pooled, client_gate_tv=gate, **kw), clients)

    def blocks(out: list) -> list[int]:
        assert all(a.chosen is not None for a in out)
        return [len(a.chosen.spec.targets(minilm)) // 2 for a in out]

    assert blocks(run(None)) == blocks(run(0.0)) == blocks(run(0.6)) == [6, 3, 1]
    out = run(0.25)
    assert blocks(out) == [1, 3, 1]
    assert "its own labels are at total variation 0.50" in out[0].reason
    assert not any("own labels" in a.reason for a in out[1:])  # the low tier was already on 1
    assert blocks(run(0.25, pooled=0.3)) == [1, 3, 1]  # after the pooled gate's cap of 3
    unknown = [*clients[:2], ClientInfo(2, tiers["low"], clients[2].workload, None)]
    out = allocate(problem(minilm, depth_gate_tv=0, client_gate_tv=0.2), unknown)
    assert blocks(out) == [6, 3, 1]  # a histogram unknown: no gate
    fixed_out = run(0.25, policy="uniform_fit")  # the other policies ignore it
    assert not any("own labels" in a.reason for a in fixed_out)


def test_shared_rank_raises_each_lora_client_to_the_rounds_largest_rank_that_fits(
    minilm: Architecture, tiers: dict
) -> None:
    """``shared_rank``: the weak tiers' near-tie rank choice is lifted to the round's
    largest, at each client's own blocks, unless that would break a limit or cost local
    steps; the other policies ignore it. (Rank nearly free in the prior, as before
    ``rank_exponent`` 1, so that the weak tiers pick smaller ranks.)"""
    clients = [client(tiers, 0, "high"), client(tiers, 1, "mid"), client(tiers, 2, "low")]
    cheap = {"rank_exponent": 0.01}
    plain = allocate(problem(minilm, depth_gate_tv=0, gain=cheap), clients)
    shared = allocate(problem(minilm, depth_gate_tv=0, shared_rank=True, gain=cheap), clients)
    ranks = [a.chosen.spec.r for a in plain if a.chosen]
    assert len(set(ranks)) > 1  # the utility alone mixes ranks here
    top = max(ranks)
    for before, after, c in zip(plain, shared, clients, strict=True):
        assert before.chosen is not None and after.chosen is not None
        assert after.chosen.spec.layers == before.chosen.spec.layers  # same blocks
        ev = evaluate(problem(minilm), after.chosen, c, adapt=True)
        assert ev.feasible and ev.steps >= (before.steps or c.workload.steps)
        if before.chosen.spec.r < top:
            assert after.chosen.spec.r > before.chosen.spec.r and "shared_rank" in after.reason
    assert [a.chosen.spec.r for a in shared if a.chosen] == [top] * 3
    # a client whose memory holds only its own rank keeps it
    low = plain[2].chosen_evaluation
    assert low is not None and low.candidate.spec.r < top
    tight = ClientInfo(
        2,
        tiers["low"].model_copy(update={"memory_bytes": int(low.cost.memory_bytes)}),
        clients[2].workload,
        DATA,
    )
    out = allocate(
        problem(minilm, depth_gate_tv=0, shared_rank=True, gain=cheap), [*clients[:2], tight]
    )
    assert out[2].chosen is not None and out[2].chosen.spec.r == low.candidate.spec.r
    assert "shared_rank" not in out[2].reason and out[1].chosen.spec.r == top
    fixed_out = allocate(problem(minilm, policy="uniform_fit", shared_rank=True), clients)
    assert not any("shared_rank" in a.reason for a in fixed_out)


def test_depth_gate_caps_only_at_depths_the_catalogue_offers(
    minilm: Architecture, tiers: dict
) -> None:
    """A catalogue whose shallowest LoRA depth is 3 blocks (as SmolLM2's is 5): the gate
    caps at 3, never at a depth no candidate has (which once left a client nothing to
    choose from and stopped the run)."""
    labels = {"high": [40, 0], "mid": [20, 20], "low": [0, 40]}
    clients = [
        ClientInfo(i, tiers[t], Workload(16, 48, 6, 24), DataProfile(40, labels[t], 1.0, 24.0))
        for i, t in enumerate(("high", "mid", "low"))
    ]
    raw = {"depth_gate_tv": 0.2, "catalogue": {"lora_depths": [0.5, 1.0]}}
    out = allocate(problem(minilm, **raw), clients)
    blocks = [len(a.chosen.spec.targets(minilm)) // 2 if a.chosen else None for a in out]
    assert blocks == [3, 3, None]  # the low tier holds no 3-block candidate
    assert all("capped at the top 3 block(s)" in a.reason for a in out[:2])
    assert out[2].chosen is None and "no candidate fits" in out[2].reason


def test_steps_shrink_to_meet_the_deadline(minilm: Architecture, tiers: dict) -> None:
    heavy = client(tiers, 0, "low", steps=40)  # far more data than the tier was sized for
    fixed = allocate(problem(minilm, adapt_steps=False), [heavy])[0]
    assert fixed.chosen is None and "deadline" in fixed.reason
    adapted = allocate(problem(minilm), [heavy])[0]
    ev = adapted.chosen_evaluation
    assert adapted.chosen is not None and ev is not None and adapted.steps == ev.steps < 40
    assert ev.steps >= math.ceil(0.25 * 40) and ev.feasible
    assert ev.cost.round_seconds <= DEADLINE * math.exp(-0.1) + 1e-9  # one σ inside
    one_more = evaluate(problem(minilm), ev.candidate, client(tiers, 0, "low", ev.steps + 1))
    assert one_more.cost.round_seconds > DEADLINE * math.exp(-0.1)  # the most that fit
    assert ev.terms.parts["R.work"] == pytest.approx((ev.steps / 40) ** 0.5)
    assert f"{ev.steps} of 40 local steps" in adapted.reason
    hopeless = allocate(problem(minilm, min_work=0.9), [heavy])[0]
    assert hopeless.chosen is None


def test_time_below_the_round_floor_is_free(minilm: Architecture, tiers: dict) -> None:
    """A fast client's time costs nothing up to the slowest client's fastest option."""
    fast, slow = client(tiers, 0, "high", steps=2), client(tiers, 1, "low", steps=8)
    aware = allocate(problem(minilm), [fast, slow])[0]
    blind = allocate(problem(minilm, round_aware=False), [fast, slow])[0]
    assert aware.terms is not None and blind.terms is not None
    assert aware.terms.parts["C.time"] == 0.0 < blind.terms.parts["C.time"]


def test_expressivity_is_coverage_not_bytes(minilm: Architecture) -> None:
    p = problem(minilm)
    by_name = {c.name: c for c in p.catalogue}
    assert p.expressivity["lora-r4-top3"] == p.expressivity["lora-r16-top3"] == 4 / 7
    assert p.expressivity["lora-r4-all"] == 1.0 == coverage(minilm, by_name["lora-r4-all"].spec)
    assert p.capacity["lora-r4-all"] < p.capacity["lora-r16-all"] == 1.0
    assert p.capacity["lora-r16-top1"] < p.capacity["lora-r16-top3"] < 1.0


def test_rank_counts_in_capacity_with_or_without_a_head(minilm: Architecture) -> None:
    """κ grows with log₂(1+r) (``rank_exponent`` 1) whether or not a task head trains;
    ``rank_exponent = 0`` makes rank free."""
    rho = math.log2(1 + 4) / math.log2(1 + 16)
    for arch in (minilm, dataclasses.replace(minilm, head_params=0)):
        kappa = problem(arch).capacity
        assert kappa["lora-r4-top3"] / kappa["lora-r16-top3"] == pytest.approx(rho)
        off = problem(arch, gain={"rank_exponent": 0}).capacity
        assert off["lora-r4-top3"] == off["lora-r16-top3"]


def test_uniform_baselines(minilm: Architecture, tiers: dict) -> None:
    clients = [client(tiers, 0, "high"), client(tiers, 1, "mid"), client(tiers, 2, "low")]
    fit = allocate(problem(minilm, policy="uniform_fit"), clients)
    assert len({a.chosen.name for a in fit if a.chosen}) == 1 and all(a.chosen for a in fit)
    assert fit[0].chosen is not None and fit[0].chosen.name == "lora-r16-top1"
    large = allocate(problem(minilm, policy="uniform_large"), clients)
    assert [a.chosen.name if a.chosen else None for a in large] == ["lora-r16-all", None, None]
    free = allocate(problem(minilm, policy="unconstrained"), clients)
    assert all(a.chosen is not None and a.chosen.name == "lora-r16-all" for a in free)
    assert "limits are ignored" in free[2].reason and free[2].evaluations[0].violations


def test_rank_by_tier_baselines(minilm: Architecture, tiers: dict) -> None:
    """FlexLoRA and HetLoRA vary the rank only: a tier that cannot hold every block is out;
    a pruned client's rank is capped."""
    high = client(tiers, 0, "high")
    slow_high = ClientInfo(1, tiers["high"], Workload(16, 48, 30, 24), DATA)
    flex = allocate(problem(minilm, policy="flexlora"), [high, slow_high, client(tiers, 2, "mid")])
    assert [a.chosen.name if a.chosen else None for a in flex][0] == "lora-r16-all"
    assert flex[1].chosen is not None and flex[1].chosen.spec.r < 16  # time binds the rank
    assert flex[2].chosen is None and "no full-depth rank fits" in flex[2].reason
    p = problem(minilm, policy="hetlora")
    capped = build_problem(minilm, p.config, p.estimator.with_ranks({0: 8}))
    het = allocate(capped, [high])[0]
    assert het.chosen is not None and het.chosen.spec.r == 8 and "self-pruned" in het.reason


def test_fedra_draws_seeded_subsets_within_reach(minilm: Architecture, tiers: dict) -> None:
    clients = [client(tiers, i, t) for i, t in enumerate(["high", "high", "mid", "low"])]
    p = problem(minilm, policy="fedra")
    assert fedra_rank(p) == 8
    assert [reachable_blocks(p, c, 8) for c in clients] == [6, 6, 3, 1]
    rounds = [allocate(build_problem(minilm, p.config, round=r), clients) for r in range(1, 6)]
    for out in rounds:
        layers = [a.chosen.spec.layers for a in out if a.chosen]
        assert [len(x) for x in layers] == [3, 3, 2, 1]
        assert all(min(x) >= 3 for x in layers[2:3]) and layers[3] == [5]
    high_draws = {tuple(out[0].chosen.spec.layers) for out in rounds if out[0].chosen}
    assert len(high_draws) > 1  # a new draw every round
    again = allocate(build_problem(minilm, p.config, round=1), clients)
    assert [a.chosen for a in again] == [a.chosen for a in rounds[0]]
    kept = p.config.model_copy(
        update={"baselines": p.config.baselines.model_copy(update={"fedra_redraw": False})}
    )
    fixed_draws = [allocate(build_problem(minilm, kept, round=r), clients) for r in range(1, 6)]
    assert len({tuple(out[0].chosen.spec.layers) for out in fixed_draws if out[0].chosen}) == 1
    assert [len(a.chosen.spec.layers) for a in fixed_draws[0] if a.chosen] == [3, 3, 2, 1]


def lora_state(b_cols: list[float]) -> dict[str, torch.Tensor]:
    """One module of rank len(b_cols) whose k-th component has norm b_cols[k]."""
    r = len(b_cols)
    a = torch.eye(r, 5)
    b = torch.zeros(4, r)
    for k, v in enumerate(b_cols):
        b[k % 4, k] = v
    return {"m.lora_A.weight": a, "m.lora_B.weight": b}


def test_hetlora_prunes_a_rank_whose_tail_is_idle() -> None:
    busy, idle = lora_state([1.0, 1.0, 1.0, 1.0]), lora_state([1.0, 1.0, 0.1, 0.1])
    assert tail_share(busy, 2) == pytest.approx(0.5)
    assert tail_share(idle, 2) == pytest.approx(0.02 / 2.02)
    out = pruned_ranks({0: (4, busy), 1: (4, idle)}, ratio=0.5, threshold=0.5, floor=2)
    assert out == {1: 2}
    assert pruned_ranks({1: (2, idle)}, ratio=0.5, threshold=0.5, floor=2) == {}  # at floor
    zero = {k: torch.zeros_like(v) for k, v in busy.items()}
    assert tail_share(zero, 2) == 0.0


def test_every_policy_respects_the_limits_unless_it_says_not(
    minilm: Architecture, tiers: dict
) -> None:
    rng = np.random.default_rng(1)
    clients = [
        client(tiers, i, str(rng.choice(["high", "mid", "low"])), int(rng.integers(1, 30)))
        for i in range(12)
    ]
    for policy in ("utility", "uniform_fit", "uniform_large", "flexlora", "hetlora", "fedra"):
        for a in allocate(problem(minilm, policy=policy), clients):
            ev = a.chosen_evaluation
            if a.chosen is not None:
                assert ev is not None and ev.feasible, (policy, a.reason)
