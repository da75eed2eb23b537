"""The accountant matches opacus called directly; budgets are refused; config checks."""

from __future__ import annotations

import json

import pytest

from fedpeft.config import load_config
from fedpeft.errors import FedpeftError
from fedpeft.privacy import (
    Accountant,
    BudgetExceeded,
    check_privacy,
    check_secure_aggregator,
    clients_per_round,
    dp_plan,
    noise_for_target_epsilon,
)

DELTA = 1e-5


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_epsilon_matches_opacus_called_directly(mechanism: str) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    ours = Accountant(mechanism)  # type: ignore[arg-type]
    theirs = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    phases = [(1.1, 0.1, 30), (0.8, 0.2, 10), (1.1, 0.1, 5)]
    for sigma, q, steps in phases:
        ours.step(sigma, q, steps)
        for _ in range(steps):
            theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.history == theirs.history
    assert ours.epsilon(DELTA) == pytest.approx(theirs.get_epsilon(delta=DELTA), rel=1e-9)


def test_stored_epsilon_and_monotonicity() -> None:
    """Stored value: RDP, σ = 1, q = 0.1, 100 steps, δ = 1e-5 (opacus 1.6)."""
    acc = Accountant("rdp")
    assert acc.epsilon(DELTA) == 0.0
    acc.step(1.0, 0.1, 100)
    assert acc.epsilon(DELTA) == pytest.approx(7.899255, rel=1e-6)
    eps = [acc.epsilon(DELTA)]
    for _ in range(3):
        acc.step(1.0, 0.1, 50)
        eps.append(acc.epsilon(DELTA))
    assert eps == sorted(eps) and len(set(eps)) == 4  # every release costs something
    assert acc.epsilon(1e-3) < acc.epsilon(1e-7)  # a looser δ buys a smaller ε


def test_json_round_trip_and_malformed_state() -> None:
    acc = Accountant("prv")
    acc.step(1.2, 0.5, 3)
    acc.step(0.9, 0.5)
    again = Accountant.from_json(json.loads(json.dumps(acc.to_json())))
    assert again == acc and again.epsilon(DELTA) == acc.epsilon(DELTA)
    for bad in (
        None,
        {"version": 2, "mechanism": "rdp", "history": []},
        {"version": 1, "mechanism": "gdp", "history": []},
        {"version": 1, "mechanism": "rdp", "history": [[1.0, 0.5]]},
        {"version": 1, "mechanism": "rdp", "history": [[1.0, 1.5, 1]]},
        {"version": 1, "mechanism": "rdp", "history": [[1.0, 0.5, True]]},
    ):
        with pytest.raises(FedpeftError, match="malformed"):
            Accountant.from_json(bad)


def test_budget_refuses_the_round_that_would_overspend() -> None:
    acc = Accountant("rdp")
    sigma = noise_for_target_epsilon(2.0, DELTA, 1.0, 10)
    for _ in range(10):
        acc.ensure_budget(sigma, 1.0, DELTA, 2.0)
        acc.step(sigma, 1.0)
    assert acc.epsilon(DELTA) <= 2.0
    with pytest.raises(BudgetExceeded, match="target_epsilon") as info:
        acc.ensure_budget(sigma, 1.0, DELTA, 2.0)
    assert isinstance(info.value, FedpeftError)
    acc.ensure_budget(sigma, 1.0, DELTA, None)  # no target: no refusal


def test_noise_for_target_epsilon_is_opacus_and_tight() -> None:
    from opacus.accountants.utils import get_noise_multiplier

    sigma = noise_for_target_epsilon(2.0, DELTA, 0.3, 20)
    assert sigma == get_noise_multiplier(
        target_epsilon=2.0, target_delta=DELTA, sample_rate=0.3, steps=20
    )
    acc = Accountant("rdp")
    acc.step(sigma, 0.3, 20)
    assert 2.0 - 0.011 <= acc.epsilon(DELTA) <= 2.0  # opacus's tolerance is 0.01
    lower = Accountant("rdp")
    lower.step(sigma * 0.95, 0.3, 20)
    assert lower.epsilon(DELTA) > 2.0
    with pytest.raises(FedpeftError, match="cannot be met"):
        noise_for_target_epsilon(1e-9, DELTA, 1.0, 10**6)


def test_an_unreachable_target_is_one_sentence_without_opacus_search_warnings() -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FedpeftError, match="cannot be met"):
            noise_for_target_epsilon(0.01, DELTA, 1.0, 3)  # the search's σ hit the largest α
    assert [str(w.message) for w in caught] == []


def test_a_large_target_is_met_without_opacus_search_warnings() -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise_for_target_epsilon(60, DELTA, 0.01, 100)  # the search's σ hit the smallest α
    assert [str(w.message) for w in caught] == []


def test_privacy_section_is_off_by_default_and_checks_its_fields() -> None:
    cfg = load_config()
    assert cfg.privacy.mode == "none" and not cfg.privacy.secure_aggregation
    ok = load_config(overrides=["privacy.mode='central'", "privacy.target_epsilon=2.0"])
    assert ok.privacy.noise_multiplier is None
    for overrides, expected in [
        (["privacy.mode='central'"], "needs `privacy.noise_multiplier` or"),
        (
            ["privacy.mode='local'", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=3"],
            "both set",
        ),
        (
            [
                "privacy.mode='local'",
                "privacy.noise_multiplier=1.0",
                "privacy.adaptive_clipping=true",
            ],
            "needs `privacy.mode` 'central'",
        ),
        (["privacy.noise_multiplier=1.0"], "set but `privacy.mode` is 'none'"),  # not DP
        (["privacy.target_epsilon=2.0"], "`privacy.target_epsilon` is set but"),
        (["privacy.mode='global'"], "`privacy.mode`"),
        (["privacy.delta=1.5"], "`privacy.delta`"),
    ]:
        with pytest.raises(FedpeftError, match=expected):
            load_config(overrides=overrides)


def test_only_linear_aggregators_run_under_secure_aggregation() -> None:
    for name in ("fedavg", "weighted_lora", "ffa_lora"):
        check_secure_aggregator(name)
    for name in ("krum", "coordinate_median", "exact_lora_svd", "clustered", "layerwise"):
        with pytest.raises(FedpeftError, match="learns only the sum") as info:
            check_secure_aggregator(name)
        message = str(info.value)
        assert message.endswith(".") and ". " not in message  # one sentence
    check_privacy(load_config(overrides=["privacy.secure_aggregation=true"]))
    for overrides, expected in [
        (["privacy.secure_aggregation=true", "server.aggregator='krum'"], "learns only"),
        (["privacy.secure_aggregation=true", "server.mode='async'"], "'async'"),
        (["privacy.secure_aggregation=true", "data.num_clients=2"], "at least 3"),
        (
            ["privacy.mode='central'", "privacy.noise_multiplier=1", "server.aggregator='krum'"],
            "DP-FedAvg",
        ),
    ]:
        with pytest.raises(FedpeftError, match=expected):
            check_privacy(load_config(overrides=overrides))


def test_dp_plan_picks_sigma_for_the_planned_rounds() -> None:
    cfg = load_config(
        overrides=[
            "privacy.mode='central'",
            "privacy.target_epsilon=4.0",
            "server.fraction=0.5",
            "run.rounds=15",
        ]
    )
    plan = dp_plan(cfg)
    assert clients_per_round(cfg) == 5 and plan.sample_rate == 0.5 and plan.releases == 15
    acc = Accountant("rdp")
    acc.step(plan.noise_multiplier, plan.sample_rate, plan.releases)
    assert 3.98 <= acc.epsilon(plan.delta) <= 4.0
    local = dp_plan(
        cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"mode": "local"})})
    )
    assert local.sample_rate == 1.0 and local.noise_multiplier > plan.noise_multiplier


def test_importing_fedpeft_and_its_privacy_part_does_not_import_opacus() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fedpeft, fedpeft.config, fedpeft.privacy, fedpeft.privacy.secagg, "
        "fedpeft.privacy.mia; print('opacus' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
