"""Personalisation on Flower's simulation engine: the same personal scores as in-process,
with each client's personal part and its error-feedback residual kept together in the
node's per-run state store (never in the run folder, never on the wire)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedpeft.client import ClientStateStore  # noqa: E402
from fedpeft.client.handler import RESIDUAL  # noqa: E402
from fedpeft.client.personal import PERSONAL  # noqa: E402
from fedpeft.runtime.flower.sim import run_flower_sim  # noqa: E402
from fedpeft.runtime.local import run_local  # noqa: E402


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "personal.jsonl").read_text().splitlines()]


def test_lora_b_with_compressed_replies_scores_the_same_on_flower(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FEDPEFT_CLIENT_STATE_DIR", str(tmp_path / "node-states"))
    cfg = tiny(
        "data.client_test_fraction=0.25",
        "personalization.mode='lora_b'",
        "data.train_size=96",
        "data.partition='dirichlet'",
        "compression.bits_up=4",
    )
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    ours, theirs = _rows(flower.run_dir), _rows(local.run_dir)
    assert [r["client_id"] for r in ours] == [r["client_id"] for r in theirs] == [0, 1]
    for a, b in zip(ours, theirs, strict=True):
        assert a["status"] == b["status"] == "ok" and set(a["models"]) == {"personal"}
        assert a["models"]["personal"]["accuracy"] == b["models"]["personal"]["accuracy"]
        assert a["models"]["personal"]["loss"] == pytest.approx(b["models"]["personal"]["loss"])
    assert flower.summary["personal"]["clients_scored"] == 2
    # the node keeps each client's personal B beside its residual, in this run's folder
    assert not (flower.run_dir / "clients").exists()
    (config_dir,) = (tmp_path / "node-states").iterdir()
    states = ClientStateStore(config_dir, per_run=True)
    run = flower.run_dir.name
    in_process = ClientStateStore(local.run_dir / "clients")
    for cid in (0, 1):
        kept = states.load(cid, 99, run)
        assert any(k.startswith(PERSONAL) and ".lora_B." in k for k in kept)
        assert any(k.startswith(RESIDUAL) for k in kept)
        assert not any(k.startswith(RESIDUAL) and ".lora_B." in k for k in kept)
        same = in_process.load(cid, 99)
        assert kept.keys() == same.keys()
        for k in kept:
            torch.testing.assert_close(kept[k], same[k], rtol=0, atol=1e-6)
        folder = states.client_folder(cid, run)
        assert folder is not None and (folder / "adapter" / "adapter_config.json").is_file()
