"""The server's privacy ledger: accounting per mode, the budget, adaptive clipping, JSON."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.config import load_config
from fedpeft.errors import FedpeftError
from fedpeft.privacy import (
    Accountant,
    BudgetExceeded,
    PrivacyLedger,
    delta_noise_multiplier,
    dp_fedavg,
    dpsgd_release,
)


def _cfg(*extra: str):  # type: ignore[no-untyped-def]
    return load_config(overrides=["data.num_clients=10", "run.rounds=5", *extra])


def _states(n: int, seed: int = 0) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    served = {"w": torch.randn(6, generator=gen), "lora_A": torch.randn(3, generator=gen)}
    return served, [
        {k: v + torch.randn(v.shape, generator=gen) for k, v in served.items()} for _ in range(n)
    ]


def test_no_ledger_without_dp() -> None:
    assert PrivacyLedger.start(_cfg(), [10] * 10) is None


def test_central_ledger_spends_its_target_and_refuses_the_next_round() -> None:
    cfg = _cfg("privacy.mode='central'", "privacy.target_epsilon=3.0", "server.fraction=0.5")
    ledger = PrivacyLedger.start(cfg, [10] * 10)
    assert ledger is not None and ledger.sample_rate == 0.5
    for _ in range(5):
        ledger.check_budget(range(5))
        eps = ledger.record(range(5), {})["epsilon"]
    acc = Accountant("rdp")
    acc.step(ledger.noise_multiplier, 0.5, 5)
    assert eps == pytest.approx(acc.epsilon(1e-5)) and eps <= 3.0
    with pytest.raises(BudgetExceeded):
        ledger.check_budget(range(5))
    again = PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again.to_json() == ledger.to_json()
    with pytest.raises(BudgetExceeded):  # a resumed run keeps the refusal
        again.check_budget(range(5))


def test_central_aggregate_is_dp_fedavg_and_adaptive_clipping_moves_s() -> None:
    served, states = _states(4)
    cfg = _cfg("privacy.mode='central'", "privacy.noise_multiplier=0.8", "privacy.clip_norm=0.5")
    ledger = PrivacyLedger.start(cfg, [10] * 10)
    assert ledger is not None
    out, info = ledger.aggregate(served, states, 10, torch.Generator().manual_seed(3))
    ref, _ = dp_fedavg(served, states, 0.5, 0.8, torch.Generator().manual_seed(3), 10)
    assert all(torch.equal(out[k], ref[k]) for k in served) and info["clip_norm"] == 0.5
    adaptive = PrivacyLedger.start(
        _cfg(
            "privacy.mode='central'",
            "privacy.noise_multiplier=0.8",
            "privacy.clip_norm=100.0",
            "privacy.adaptive_clipping=true",
            "privacy.count_noise_multiplier=2.0",
        ),
        [10] * 10,
    )
    assert adaptive is not None
    out, info = adaptive.aggregate(served, states, 10, torch.Generator().manual_seed(3))
    ref, _ = dp_fedavg(
        served,
        states,
        100.0,
        delta_noise_multiplier(0.8, 2.0),
        torch.Generator().manual_seed(3),
        10,
    )
    assert all(torch.equal(out[k], ref[k]) for k in served)
    assert adaptive.clip_norm < 100.0  # every update fit under S: it shrinks
    with pytest.raises(FedpeftError, match="must exceed"):
        PrivacyLedger.start(
            _cfg(
                "privacy.mode='central'",
                "privacy.noise_multiplier=3.0",
                "privacy.adaptive_clipping=true",
            ),
            [10] * 10,
        )


def test_local_ledger_accounts_each_client_by_its_participation() -> None:
    cfg = _cfg("privacy.mode='local'", "privacy.noise_multiplier=1.2")
    ledger = PrivacyLedger.start(cfg, [10] * 10)
    assert ledger is not None
    ledger.record([0, 1], {})
    eps = ledger.record([0, 2], {})["epsilon"]
    twice = Accountant("rdp")
    twice.step(1.2, 1.0, 2)
    assert eps == pytest.approx(twice.epsilon(1e-5))
    assert ledger.clients[1].history == [(1.2, 1.0, 1)]


def test_dpsgd_ledger_composes_the_clients_reported_steps_and_checks_plans() -> None:
    cfg = _cfg("privacy.mode='dpsgd'", "privacy.target_epsilon=4.0", "client.batch_size=8")
    ledger = PrivacyLedger.start(cfg, [40] * 10)
    assert ledger is not None
    steps, q = dpsgd_release(cfg, 40)
    assert (steps, q) == (5, 0.2)
    metrics = {
        "dp_steps": 5.0,
        "dp_sample_rate": 0.2,
        "dp_noise_multiplier": ledger.noise_multiplier,
    }
    for _ in range(5):
        ledger.check_budget([3], {3: (steps, q)})
        eps = ledger.record([3], {3: metrics})["epsilon"]
    assert eps <= 4.0
    with pytest.raises(BudgetExceeded):
        ledger.check_budget([3], {3: (steps, q)})


def test_malformed_ledger_state_is_refused() -> None:
    cfg = _cfg("privacy.mode='local'", "privacy.noise_multiplier=1.0")
    ledger = PrivacyLedger.start(cfg, [10] * 10)
    assert ledger is not None
    good = ledger.to_json()
    for bad in (None, good | {"version": 0}, good | {"mode": "none"}, good | {"clients": {"x": 1}}):
        with pytest.raises(FedpeftError, match="malformed"):
            PrivacyLedger.from_json(bad)


def test_release_sum_under_secure_aggregation_matches_dp_fedavg() -> None:
    """Clients clip, the masked sum is unmasked, the server adds the noise once: the same
    draw as DP-FedAvg over the individual updates."""
    from fedpeft.privacy import clip_delta, delta

    served, states = _states(3, seed=1)
    cfg = _cfg("privacy.mode='central'", "privacy.noise_multiplier=1.1", "privacy.clip_norm=0.7")
    ledger = PrivacyLedger.start(cfg, [10] * 10)
    assert ledger is not None
    clipped = [clip_delta(delta(s, served), 0.7) for s in states]
    summed = {k: sum(c[k] for c in clipped) for k in served}
    mean = ledger.release_sum(summed, 5, torch.Generator().manual_seed(4))
    ref, _ = dp_fedavg(served, states, 0.7, 1.1, torch.Generator().manual_seed(4), 5)
    for k in served:
        torch.testing.assert_close((served[k].double() + mean[k]).float(), ref[k])
