"""The cost model, the catalogue, the utility and the allocation policies (configs only;
no model is built or loaded)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from transformers import AutoConfig, BertConfig, RobertaConfig

from fedpeft.allocation import (
    AllocationConfig,
    AllocationProblem,
    Calibration,
    CatalogueConfig,
    ClientInfo,
    GainEstimator,
    Workload,
    allocate,
    allocation_rows,
    allocation_to_json,
    build_catalogue,
    build_problem,
    client_workload,
    data_scale,
    explain,
    format_allocations,
    forward_flops,
    get_policy,
    ignores_limits,
    make_allocation_config,
    make_candidate,
    peak_memory,
    policy_names,
    predict_cost,
    register_policy,
    step_flops,
    step_seconds,
    update_bytes,
)
from fedpeft.allocation.cost import block_activation_bytes, parameter_bytes
from fedpeft.data import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec
from fedpeft.peft import Architecture, architecture, parse_spec
from fedpeft.profiling import DEFAULT_TIERS, GiB, MiB, ResourceProfile

DIMS = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48)
DATA = DataProfile(200, [100, 100], 1.0, 30.0)
WORK = client_workload(DATA, batch_size=16, max_length=64)


@pytest.fixture(scope="module")
def minilm() -> Architecture:
    path = get_model_spec("minilm-l6").local_path()
    assert path is not None
    return architecture(AutoConfig.from_pretrained(str(path)), 2)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request: pytest.FixtureRequest) -> Architecture:
    cls = BertConfig if request.param == "bert" else RobertaConfig
    return architecture(cls(vocab_size=100, max_position_embeddings=70, **DIMS), 3)


def client(i: int, tier: str = "mid", data: DataProfile | None = DATA) -> ClientInfo:
    return ClientInfo(i, DEFAULT_TIERS[tier], WORK, data)


def pick(problem: AllocationProblem, c: ClientInfo) -> str | None:
    chosen = allocate(problem, [c])[0].chosen
    return chosen.name if chosen else None


def costs(arch: Architecture, method: str, options: dict[str, Any], batch: int = 16) -> tuple:
    spec = parse_spec(method, options)
    work = Workload(batch, 64, 10, 32)
    c = predict_cost(arch, spec, work, DEFAULT_TIERS["mid"])
    return c.memory_bytes, c.bytes_up, c.step_seconds


# ---- cost model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "key", "sizes"),
    [("lora", "r", [1, 2, 4, 8, 16, 32]), ("houlsby", "size", [4, 8, 32, 64])],
)
def test_more_rank_or_size_costs_more(tiny: Architecture, method: str, key: str, sizes: list):
    """Memory, bytes and step time all grow strictly with LoRA's rank / an adapter's size."""
    series = [costs(tiny, method, {key: s}) for s in sizes]
    for small, big in zip(series, series[1:], strict=False):
        assert all(b > a for a, b in zip(small, big, strict=True)), (small, big)


def test_larger_batch_and_longer_sequences_need_more_memory(minilm: Architecture) -> None:
    for method in ("lora", "houlsby", "prompt", "prefix", "ia3", "bitfit", "head", "full"):
        spec = parse_spec(method, {})
        by_batch = [peak_memory(minilm, spec, b, 64) for b in (1, 4, 16, 64)]
        by_len = [peak_memory(minilm, spec, 16, s) for s in (16, 64, 128)]
        assert by_batch == sorted(set(by_batch)) and by_len == sorted(set(by_len)), method


def test_memory_orders_methods_and_placements(minilm: Architecture) -> None:
    def mem(method: str, **options: Any) -> int:
        return peak_memory(minilm, parse_spec(method, options), 16, 64)

    assert mem("head") < mem("lora", layers=[3, 4, 5]) < mem("lora") < mem("full")
    assert mem("lora") < mem("prompt", num_virtual_tokens=20)  # 20 more tokens everywhere
    # AdamW keeps two moments: full fine-tuning needs ≥ 16 bytes per parameter
    assert mem("full") > 16 * minilm.total_params


def test_parameter_and_activation_formulas(tiny: Architecture) -> None:
    lora = parse_spec("lora", {"r": 4})
    t = lora.trainable_params(tiny)
    new = t - tiny.head_params
    assert parameter_bytes(tiny, lora) == 4 * (tiny.total_params + new) + 12 * t
    assert parameter_bytes(tiny, lora, "sgd") == 4 * (tiny.total_params + new) + 4 * t
    full = parse_spec("full", {})
    assert parameter_bytes(tiny, full) == 16 * tiny.total_params
    h, f, a, b, s = 32, 48, 2, 8, 10
    assert block_activation_bytes(tiny, b, s, s) == b * s * (34 * h + 8 * f + 9 * a * s)
    cal = Calibration(framework_bytes=0, activation_scale=1.0)  # the bare formula
    acts = peak_memory(tiny, lora, b, s, calibration=cal) - parameter_bytes(tiny, lora)
    assert acts == (tiny.layers + 1) * block_activation_bytes(tiny, b, s, s)
    head = parse_spec("head", {})
    acts = peak_memory(tiny, head, b, s, calibration=cal) - parameter_bytes(tiny, head)
    assert acts == block_activation_bytes(tiny, b, s, s)  # one block of transient buffers


def test_step_flops_are_3x_full_2x_frozen_1x_head(minilm: Architecture) -> None:
    theory = Calibration(grad_input_factor=1.0, grad_weight_factor=1.0)  # Kaplan et al.
    fwd = forward_flops(minilm, parse_spec("full", {}), 64)
    assert step_flops(minilm, parse_spec("full", {}), 1, 64, theory) == pytest.approx(3 * fwd)
    assert step_flops(minilm, parse_spec("head", {}), 1, 64, theory) == pytest.approx(fwd)
    lora = parse_spec("lora", {})
    lora_fwd = forward_flops(minilm, lora, 64)
    extra = lora.extra_flops(minilm, 64)
    assert step_flops(minilm, lora, 1, 64, theory) == pytest.approx(2 * lora_fwd + extra)
    top = parse_spec("lora", {"layers": [3, 4, 5]})
    assert step_flops(minilm, top, 1, 64) < step_flops(minilm, lora, 1, 64)
    seconds = step_seconds(minilm, lora, 16, 64, 1e10, Calibration(flops_efficiency=0.5))
    assert seconds == pytest.approx(step_flops(minilm, lora, 16, 64) / 5e9)


def test_round_time_and_bytes(minilm: Architecture) -> None:
    spec = parse_spec("lora", {"r": 8})
    profile = DEFAULT_TIERS["low"]
    cost = predict_cost(minilm, spec, WORK, profile, bits_down=32, bits_up=4)
    t = spec.trainable_params(minilm)
    assert cost.bytes_down == spec.update_bytes(minilm) == 4 * t
    assert cost.bytes_up == math.ceil(t * 4 / 8) == update_bytes(minilm, spec, 4)
    transfer = 8 * cost.bytes_down / profile.download_bps + 8 * cost.bytes_up / 1e6
    assert cost.transfer_seconds == pytest.approx(transfer)
    assert cost.round_seconds == pytest.approx(WORK.steps * cost.step_seconds + transfer)
    assert json.dumps(cost.to_json())
    with pytest.raises(FedpeftError, match=r"`bits_per_param` must be in \[1, 32\], got 0"):
        update_bytes(minilm, spec, 0)


def test_workload_and_calibration_validation() -> None:
    assert client_workload(DATA, 16, 64) == Workload(16, 64, 13, 30)
    assert client_workload(DATA, 16, 64, epochs=2).steps == 26
    assert client_workload(DATA, 16, 20, steps=5) == Workload(16, 20, 5, 20)
    with pytest.raises(FedpeftError, match=r"`workload.batch_size` must be an int >= 1, got 0"):
        Workload(0, 64, 1, 10)
    with pytest.raises(FedpeftError, match=r"`workload.mean_seq_len` must be <= seq_len"):
        Workload(4, 64, 1, 65)
    with pytest.raises(FedpeftError, match=r"`calibration.flops_efficiency` must be in"):
        Calibration(flops_efficiency=1.5)
    with pytest.raises(FedpeftError, match=r"`calibration.framework_bytes` must be >= 0"):
        Calibration(framework_bytes=-1)


# ---- catalogue and config ---------------------------------------------------------------


def test_default_catalogue_is_one_lora_envelope(minilm: Architecture) -> None:
    """Rank × depth (top blocks) with the default targets: every candidate joins ``lora``."""
    cat = build_catalogue(minilm)
    names = [c.name for c in cat]
    assert len(names) == len(set(names)) == 3 * 4
    assert {c.method for c in cat} == {"lora"} and {c.spec.envelope_group for c in cat} == {"lora"}
    assert {"lora-r4-all", "lora-r8-top3", "lora-r16-top2", "lora-r16-top1"} <= set(names)
    top = next(c for c in cat if c.name == "lora-r16-top2")
    assert top.options["layers"] == [4, 5] and top.spec == parse_spec("lora", top.options)
    assert "layers" not in next(c for c in cat if c.name == "lora-r8-all").options


def test_custom_catalogue(tiny: Architecture) -> None:
    cfg = CatalogueConfig(
        lora_ranks=[4],
        lora_depths=[0.5, 0.4],  # both round to the top 2 of 4 blocks: generated once
        lora_targets=["qv", "qkv_ffn"],
        others=["bitfit"],
        extra=[{"method": "lora", "options": {"r": 2, "target_modules": ["query"]}}],
    )
    cat = build_catalogue(tiny, cfg)
    names = [c.name for c in cat]
    assert names == [
        "lora-r4-top2",
        "lora-r4-top2-qkv_ffn",
        "bitfit",
        "lora(r=2, target_modules=['query'])",
    ]
    wide = cat[1].spec
    assert wide.target_modules == ["query", "key", "value", "output.dense"]
    assert wide.trainable_params(tiny) > cat[0].spec.trainable_params(tiny)
    dup = CatalogueConfig(others=["head"], extra=[{"name": "head", "method": "head"}])
    with pytest.raises(FedpeftError, match="two catalogue candidates are named 'head'"):
        build_catalogue(tiny, dup)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"policy": "greedy"}, r"`allocation.policy`: expected one of fedra, flexlora, hetlora"),
        ({"alpha": -1}, r"`allocation.alpha`: Input should be greater than or equal to 0"),
        ({"deadline_s": 0}, r"`allocation.deadline_s`"),
        ({"policy": "uniform"}, r"`allocation.uniform` is required"),
        ({"policy": "tiered"}, r"`allocation.tiers` is required"),
        ({"uniform": {"method": "lorra"}}, r"`allocation.uniform.method`: expected one of"),
        (
            {"uniform": {"method": "lora", "options": {"r": 0}}},
            r"`allocation.uniform.options`: not valid for 'lora': `r`: Input should be greater",
        ),
        (
            {"tiers": {"low": {"method": "houlsby", "options": {"sise": 8}}}},
            r"`allocation.tiers.low.options`: .* unknown option `sise` \(its options: size",
        ),
        ({"cost_weights": {"time": 0, "memory": 0, "bytes": 0, "risk": 0}}, "at least one posi"),
        ({"min_work": 0}, r"`allocation.min_work`"),
        ({"catalogue": {"lora_depths": [1.5]}}, r"`allocation.catalogue.lora_depths.0`"),
        ({"gain": {"prior": {"lora": 2.0}}}, r"`allocation.gain.prior`: every prior mean"),
        ({"catalogue": {"others": ["nope"]}}, r"`allocation.catalogue.others`"),
        ({"bits_up": 64}, r"`allocation.bits_up`"),
        ({"enabled": 1}, r"`allocation.enabled`: Input should be a valid boolean, got 1"),
        ({"bits_up": 8.0}, r"`allocation.bits_up`: Input should be a valid integer, got 8.0"),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(FedpeftError, match=expected):
        make_allocation_config(raw)


def test_policy_registry() -> None:
    baselines = {"uniform_fit", "uniform_large", "unconstrained", "flexlora", "hetlora", "fedra"}
    assert {"uniform", "tiered", "utility"} | baselines <= set(policy_names())
    assert ignores_limits("unconstrained") and not ignores_limits("utility")
    with pytest.raises(FedpeftError, match="not a registered policy"):
        get_policy("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_policy("utility", get_policy("utility"))


# ---- utility and policies ---------------------------------------------------------------


def random_profile(rng: np.random.Generator, i: int) -> ResourceProfile:
    return ResourceProfile(
        tier=f"r{i}",
        memory_bytes=int(rng.uniform(0.3, 3.0) * GiB),
        cores=int(rng.integers(1, 9)),
        flops_per_s=float(10 ** rng.uniform(9, 11.5)),
        upload_bps=float(10 ** rng.uniform(5, 8)),
        download_bps=float(10 ** rng.uniform(6, 9)),
    )


def test_allocation_respects_every_hard_limit(minilm: Architecture) -> None:
    rng = np.random.default_rng(0)
    chosen = rejected = 0
    for _ in range(6):
        deadline = float(rng.uniform(5, 200))
        problem = build_problem(minilm, AllocationConfig(deadline_s=deadline, policy="utility"))
        clients = []
        for i in range(25):
            n = int(rng.integers(5, 500))
            data = DataProfile(n, [n // 2, n - n // 2], 1.0, float(rng.uniform(5, 64)))
            work = client_workload(data, int(rng.choice([4, 16, 64])), 64)
            clients.append(ClientInfo(i, random_profile(rng, i), work, data))
        for c, a in zip(clients, allocate(problem, clients), strict=True):
            assert len(a.evaluations) == len(problem.catalogue)
            for ev in a.evaluations:
                fits = (
                    ev.cost.memory_bytes <= c.resources.memory_bytes
                    and ev.cost.round_seconds <= deadline
                )
                assert ev.feasible == fits
                assert 0 <= ev.terms.R <= 1 and 0 <= ev.terms.C <= 1 and 0 <= ev.terms.E <= 1
            if a.chosen is None:
                assert not any(ev.feasible for ev in a.evaluations) and "no candidate" in a.reason
                continue
            best = next(ev for ev in a.evaluations if ev.candidate == a.chosen)
            assert best.feasible and best.terms == a.terms
            top = max(ev.terms.U for ev in a.evaluations if ev.feasible)
            assert a.terms is not None and top <= a.terms.U + 1e-9
            chosen += 1
            rejected += sum(not ev.feasible for ev in a.evaluations)
    assert chosen > 20 and rejected > 100  # the property was exercised both ways


def test_explanations_list_every_candidate(minilm: Architecture) -> None:
    problem = build_problem(
        minilm, AllocationConfig(deadline_s=80, adapt_steps=False, policy="utility")
    )
    allocations = allocate(problem, [client(0, "high"), client(1, "low")])
    low = allocations[1]
    candidates: Any = allocation_to_json(low)["candidates"]
    names = [c["candidate"] for c in candidates]
    assert names == [c.name for c in problem.catalogue]
    statuses = {c["candidate"]: c["status"] for c in candidates}
    assert low.chosen is not None and statuses[low.chosen.name] == "chosen"
    for c in candidates:
        if c["status"] == "rejected":
            assert c["violations"] and "(+" in c["violations"][0]
        else:
            assert not c["violations"]
    assert "rejected" in statuses.values() and "considered" in statuses.values()
    json.dumps([allocation_to_json(a) for a in allocations])
    text = explain(low)
    assert all(name in text for name in names) and "deadline 80.0 s" in text
    for column in ("kappa", "credit", "c_time", "c_bytes", "c_risk", "steps"):
        assert column in text.splitlines()[1]
    table = format_allocations(allocations)
    assert len(table.splitlines()) == 3 and table.startswith("client  tier  chosen")
    rows = allocation_rows(allocations)
    assert rows[0]["chosen"] == pick(problem, client(0, "high"))


def test_ties_are_broken_by_cost_then_order(tiny: Architecture) -> None:
    extra = [
        {"name": "a", "method": "lora", "options": {"r": 4}},
        {"name": "b", "method": "lora", "options": {"r": 4}},
        {"name": "c", "method": "lora", "options": {"r": 2}},
    ]
    none = {"lora_ranks": [], "adapter_methods": [], "prompt_tokens": [], "others": []}
    flat = {
        "alpha": 0.0,
        "beta": 0.0,
        "gamma": 0.0,
        "policy": "utility",
    }  # every U is 0: a tie everywhere
    cfg = make_allocation_config(flat | {"catalogue": none | {"extra": extra}})
    c = ClientInfo(0, DEFAULT_TIERS["high"], Workload(4, 16, 2, 16))
    assert pick(build_problem(tiny, cfg), c) == "c"  # the cheapest of the three
    cfg = make_allocation_config(flat | {"catalogue": none | {"extra": extra[:2]}})
    assert {pick(build_problem(tiny, cfg), c) for _ in range(3)} == {"a"}  # same cost: order
    swapped = make_allocation_config(flat | {"catalogue": none | {"extra": extra[1::-1]}})
    assert pick(build_problem(tiny, swapped), c) == "b"


def test_uniform_policy(minilm: Architecture) -> None:
    cfg = make_allocation_config(
        {"policy": "uniform", "uniform": {"method": "lora", "options": {"r": 8}}}
    )
    problem = build_problem(minilm, cfg)
    tiny_device = DEFAULT_TIERS["high"].model_copy(update={"tier": "tiny", "memory_bytes": MiB})
    fits, misses = allocate(problem, [client(0, "high"), ClientInfo(1, tiny_device, WORK)])
    assert fits.chosen is not None and fits.chosen.options == {"r": 8} and fits.terms is not None
    assert len(fits.evaluations) == 1
    assert misses.chosen is None and misses.terms is None
    assert "does not fit: memory" in misses.reason and "> 0.00 GiB" in misses.reason


def test_tiered_policy(minilm: Architecture) -> None:
    tiers = {
        "high": {"method": "lora", "options": {"r": 16}},
        "mid": {"method": "lora", "options": {"r": 4}},
        "low": {"method": "head"},
    }
    problem = build_problem(minilm, make_allocation_config({"policy": "tiered", "tiers": tiers}))
    out = allocate(problem, [client(0, "high"), client(1, "mid"), client(2, "low")])
    assert [a.chosen.name for a in out if a.chosen] == ["lora(r=16)", "lora(r=4)", "head"]
    phone = DEFAULT_TIERS["mid"].model_copy(update={"tier": "phone"})
    with pytest.raises(FedpeftError, match="no entry for tier 'phone'"):
        allocate(problem, [ClientInfo(3, phone, WORK)])


def test_utility_adapts_to_the_device(minilm: Architecture) -> None:
    problem = build_problem(minilm, AllocationConfig(deadline_s=60, policy="utility"))
    high, low = allocate(problem, [client(0, "high"), client(1, "low")])
    assert high.chosen is not None and low.chosen is not None
    # the slow device is given less work: fewer parameters, or fewer local steps
    work_high = high.chosen.spec.trainable_params(minilm) * (high.steps or WORK.steps)
    assert work_high > low.chosen.spec.trainable_params(minilm) * (low.steps or WORK.steps)


def test_credited_gains_move_the_choice(minilm: Architecture) -> None:
    catalogue = {"lora_ranks": [8], "lora_depths": [1.0], "others": ["head"]}
    weak_prior = {"gamma": 0.0, "gain": {"prior_count": 1.0}}  # E would keep LoRA ahead
    cfg = make_allocation_config({"catalogue": catalogue, "policy": "utility"} | weak_prior)
    problem = build_problem(minilm, cfg)
    first = allocate(problem, [client(0, "high")])[0].chosen
    assert first is not None and first.name == "lora-r8-all"
    head = next(c for c in problem.catalogue if c.name == "head")
    estimator = problem.estimator
    before = estimator.mean(head)
    for gain in (0.0, 0.05, -0.05) * 8:  # head credited in the good rounds, LoRA in the bad
        credit = {head.name: 1.0} if gain > 0 else {first.name: 1.0}
        estimator = estimator.observe(credit, gain)
    assert problem.estimator.mean(head) == before  # observing returns a new estimator
    moved = build_problem(minilm, cfg, estimator=estimator)
    assert allocate(moved, [client(0, "high")])[0].chosen == head


def test_gain_estimator_centres_credits_and_shrinks(minilm: Architecture) -> None:
    """``δ_c = Σ w·(y − ½)/(n₀ + Σ w)`` with ``y`` centred on the running mean ``ḡ``."""
    lora = make_candidate("lora", {"r": 4}, "x")
    other = make_candidate("lora", {"r": 8}, "y")
    est = GainEstimator()
    g = est.config
    assert est.prior(lora) == lora.spec.gain_prior == 0.75  # the method's own prior
    assert est.mean(lora) == 0.75 and est.mean(lora, capacity=0.5) == 0.375
    est = est.observe({"x": 3.0, "y": 1.0}, 0.01)  # ḡ = 0 before: y = ½ + 0.01/0.04
    y1 = 0.5 + 0.01 / (2 * g.gain_scale)
    assert est.deviation(lora) == pytest.approx(0.75 * (y1 - 0.5) / (g.prior_count + 0.75))
    assert est.deviation(other) == pytest.approx(0.25 * (y1 - 0.5) / (g.prior_count + 0.25))
    assert est.mean_gain == 0.01  # the first gain starts the running mean
    est = est.observe({"x": 1.0}, 0.01)  # the same gain again is average: no credit
    assert est.deviation(lora) == pytest.approx(0.75 * (y1 - 0.5) / (g.prior_count + 1.75))
    # one terrible round moves a configuration by at most w·½/(n₀ + w)
    bad = GainEstimator().observe({"x": 0.1, "y": 0.9}, -1.0)
    assert bad.deviation(lora) == pytest.approx(-0.1 * 0.5 / (g.prior_count + 0.1))
    assert GainEstimator.from_json(json.loads(json.dumps(est.to_json()))) == est
    with pytest.raises(FedpeftError, match="`gain` must be a finite number"):
        est.observe({"x": 1.0}, math.nan)
    with pytest.raises(FedpeftError, match="`shares` must be non-negative"):
        est.observe({"x": 0.0}, 0.1)


def test_data_scale() -> None:
    assert data_scale(None) == 1.0
    few, many = DataProfile(10, [5, 5], 1.0, 20.0), DataProfile(1000, [500, 500], 1.0, 20.0)
    skewed = DataProfile(1000, [1000, 0], 0.0, 20.0)
    assert 0 < data_scale(few) < data_scale(many) < 1
    assert data_scale(skewed) == pytest.approx(data_scale(many) / 2)
