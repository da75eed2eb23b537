"""A rule that cannot take the model's adapter stops the run after its first two rounds with
one clear sentence, instead of training for every round while the global never changes
(how EfficientNet-Lite0 under `exact_lora_svd` ran before conv LoRA was supported); a
failure in a round after one that aggregated is logged and recorded, and the run goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedpeft.aggregation import fedavg, registry
from fedpeft.errors import FedpeftError
from fedpeft.runtime.local import run_local
from tests.conftest import tiny_config

CALLS = {"n": 0}


def _never(updates: Any) -> Any:
    raise ValueError("this rule takes no adapter at all")


def _from_round_two(updates: Any) -> Any:
    CALLS["n"] += 1
    if CALLS["n"] >= 2:
        raise ValueError("a reply this rule cannot take")
    return fedavg(updates)


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rules registered for the test only (the registries restored after it)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PARTS", dict(registry._PARTS))
    registry.register_aggregator("test_never", _never)
    registry.register_aggregator("test_from_round_two", _from_round_two)


def test_a_rule_that_never_aggregates_stops_the_run(tmp_path: Path, rules: None) -> None:
    cfg = tiny_config(tmp_path, "run.rounds=4", "server.aggregator='test_never'")
    with pytest.raises(FedpeftError, match=r"failed to aggregate in rounds 1 and 2 .*never"):
        run_local(cfg)


def test_a_later_failure_is_recorded_and_the_run_goes_on(tmp_path: Path, rules: None) -> None:
    CALLS["n"] = 0
    cfg = tiny_config(tmp_path, "run.rounds=3", "server.aggregator='test_from_round_two'")
    result = run_local(cfg)
    failed = [r.get("aggregation_failed", {}) for r in result.rounds]  # metrics.jsonl lines
    assert failed[0] == {} and all("cannot take" in f.get("global", "") for f in failed[1:])
    assert result.summary["rounds_aggregation_failed"] == 2
