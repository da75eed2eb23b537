"""Personalisation on Flower's simulation engine: the same personal scores and personal
modules as in-process, with each client's personal part and its error-feedback residual
kept together in its node's Context state (the worker processes keep none of it between
messages; never in the run folder, never on the wire), its snapshot on the node's disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from safetensors.torch import load_file  # noqa: E402

from fedpeft.client.snapshot import MANIFEST  # noqa: E402
from fedpeft.peft.io import WEIGHTS  # noqa: E402
from fedpeft.runtime.flower.sim import run_flower_sim  # noqa: E402
from fedpeft.runtime.local import run_local  # noqa: E402


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "personal.jsonl").read_text().splitlines()]


def test_lora_b_with_compressed_replies_scores_the_same_on_flower(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
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
    # each node exported its personal model (B kept across rounds in its Context) on its own
    # disk, as the in-process run did in its run folder, beside the snapshot of its kept
    # state (client.snapshot); no kept state was written in the run folder
    assert not (flower.run_dir / "clients").exists()
    (config_dir,) = (tmp_path / "node").iterdir()
    for cid in (0, 1):
        folder = config_dir / flower.run_dir.name / str(cid)
        names = sorted(p.name for p in folder.iterdir())
        assert names[0] == "adapter" and names[2] == MANIFEST and len(names) == 3
        assert names[1].startswith("kept-") and names[1].endswith(".safetensors")
    for cid in (0, 1):
        ours = load_file(config_dir / flower.run_dir.name / str(cid) / "adapter" / WEIGHTS)
        theirs = load_file(local.run_dir / "clients" / str(cid) / "adapter" / WEIGHTS)
        assert ours.keys() == theirs.keys() and any(".lora_B." in k for k in ours)
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-6)
