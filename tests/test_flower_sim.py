"""The same config and seed on the in-process runtime and on Flower's simulation engine."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedpeft.runtime.flower.sim import run_flower_sim  # noqa: E402
from fedpeft.runtime.local import run_local  # noqa: E402


def test_flower_simulation_gives_the_in_process_final_adapter(tiny) -> None:
    cfg = tiny("data.partition='dirichlet'", "client.proximal_mu=0.01")
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    assert sorted(flower.state) == sorted(local.state)
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    for ours, theirs in zip(flower.rounds, local.rounds, strict=True):
        assert ours["eval"] == pytest.approx(theirs["eval"], abs=1e-6)
    # fedpeft's own byte count is the same (up to the digits of the reported train time);
    # Flower's serialised messages are a little larger
    assert flower.summary["bytes_down_total"] == local.summary["bytes_down_total"]
    assert abs(flower.summary["bytes_up_total"] - local.summary["bytes_up_total"]) < 64
    stats = json.loads((flower.run_dir / "flower.json").read_text())
    assert stats["wire_bytes_up"] > stats["fedpeft_bytes_up"] == flower.summary["bytes_up_total"]
    assert stats["wire_bytes_down"] > stats["fedpeft_bytes_down"]
    # every client answered first contact with its example count and a measured profile
    clients = stats["clients"]
    assert sorted(clients) == ["0", "1"]
    assert sum(c["num_examples"] for c in clients.values()) == 64
    assert all(c["profile"]["tier"] == "measured" and c["profile"]["cores"] >= 1
               for c in clients.values())  # fmt: skip
    # the simulation engine keeps its worker processes: the base model loaded once in each
    assert all(c["model_loads_in_last_process"] == 1 for c in clients.values())


def test_the_server_allocates_from_what_flower_clients_report(tiny) -> None:
    """First contact carries the measured device and the data profile; the allocation
    decides from them (here: a uniform LoRA r=4 that fits any measured machine)."""
    cfg = tiny(
        "allocation.enabled=true",
        "allocation.policy='uniform'",
        "allocation.uniform={method='lora',options={r=4,alpha=8}}",
        "run.rounds=1",
    )
    flower = run_flower_sim(cfg, workers=2)
    clients = [json.loads(x) for x in (flower.run_dir / "clients.jsonl").read_text().splitlines()]
    assert all(c["status"] == "ok" and c["group"] == "lora" for c in clients)
    assert all(c["tier"] == "measured" and c["config"] == "lora(alpha=8, r=4)" for c in clients)
    decisions = [
        json.loads(x) for x in (flower.run_dir / "allocations.jsonl").read_text().splitlines()
    ]
    assert len(decisions) == 2 and all(d["tier"] == "measured" for d in decisions)


def test_compressed_updates_with_error_feedback_travel_on_flower(
    tiny, tmp_path, monkeypatch
) -> None:
    """4-bit replies with each client's residual kept in its node's Context state (and its
    snapshot on the node's disk), and an 8-bit global sent down, give the in-process
    result."""
    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    cfg = tiny("compression.bits_up=4", "compression.bits_down=8", "data.partition='dirichlet'")
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    snapshots = sorted((tmp_path / "node").glob(f"*/{flower.run_dir.name}/*/kept.json"))
    assert [p.parent.name for p in snapshots] == ["0", "1"]
    assert all(json.loads(p.read_text())["round"] == 2 for p in snapshots)


def test_local_dp_on_flower_gives_the_in_process_noisy_adapter_and_epsilon(tiny) -> None:
    """The instruction's `privacy` field crosses Flower's messages; the client handler adds
    the same seeded noise there as in process."""
    cfg = tiny(
        "privacy.mode='local'",
        "privacy.noise_multiplier=1.5",
        "privacy.clip_norm=0.05",
        "run.rounds=1",
    )
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    assert flower.rounds[0]["privacy"] == local.rounds[0]["privacy"]
    assert flower.summary["privacy"]["epsilon"] > 0


def test_the_engines_chatter_is_quiet_unless_verbose() -> None:
    """Flower's DEBUG/INFO lines pass only when fedpeft runs verbose; its advice to use
    `flwr run` (fedpeft's call, not the user's) never; its warnings always."""
    import logging

    from fedpeft.runtime.flower.sim import _QuietEngine

    def record(level: int, text: str) -> logging.LogRecord:
        return logging.LogRecord("flwr", level, __file__, 1, text, None, None)

    quiet, root = _QuietEngine(), logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.WARNING)  # `fedpeft run` without -v
        assert not quiet.filter(record(logging.DEBUG, "Registered 2 nodes"))
        assert quiet.filter(record(logging.WARNING, "a node failed"))
        advice = "DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be"
        assert not quiet.filter(record(logging.WARNING, advice))
        root.setLevel(logging.INFO)  # -v
        assert quiet.filter(record(logging.DEBUG, "Registered 2 nodes"))
        assert not quiet.filter(record(logging.WARNING, advice))
    finally:
        root.setLevel(before)
