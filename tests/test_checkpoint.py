"""Checkpoints: typed and versioned, verified before they are trusted, two rounds kept.

Each damage below is one a resumed run used to adopt silently (issue 14): it must either
fall back to the previous valid round (and then end exactly like an uninterrupted run) or
be refused with one sentence, leaving the run folder as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedpeft.errors import FedpeftError
from fedpeft.runtime.local import run_local
from fedpeft.server import Observer, RunStore, ServerState
from fedpeft.server.checkpoint import Checkpoints
from fedpeft.server.state import STATE_FORMAT
from fedpeft.types import RoundRecord


class _StopAt(Observer):
    """Interrupts the run at the start of round ``start`` or the end of round ``end``."""

    def __init__(self, *, start: int = 0, end: int = 0) -> None:
        self.start, self.end = start, end

    def on_round_start(self, rnd: int, sampled) -> None:  # type: ignore[no-untyped-def]
        if rnd == self.start:
            raise KeyboardInterrupt

    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == self.end:
            raise KeyboardInterrupt


def _stopped(cfg, **stop: int) -> Path:  # type: ignore[no-untyped-def]
    before = set(Path(cfg.run.output_dir).glob("*")) if Path(cfg.run.output_dir).exists() else set()
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAt(**stop))
    (new,) = set(Path(cfg.run.output_dir).glob("*")) - before
    return new


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def three(tiny):  # type: ignore[no-untyped-def]
    return tiny("run.rounds=3", "data.partition='dirichlet'")


def test_a_run_killed_in_its_first_round_resumes_to_the_same_result(three) -> None:
    full = run_local(three)
    stopped = _stopped(three, start=1)
    assert RunStore(stopped).checkpoints.rounds() == [0]
    resumed = run_local(three, resume=stopped)
    _same(resumed.state, full.state)


def test_a_damaged_newest_round_falls_back_to_the_previous_one(three, caplog) -> None:
    full = run_local(three)
    stopped = _stopped(three, end=2)
    ckpt = stopped / "checkpoint"
    _flip_a_bit(ckpt / "round-000002.safetensors")
    resumed = run_local(three, resume=stopped)
    assert "resuming from the previous valid checkpoint, round 1" in caplog.text
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    _same(resumed.state, full.state)


@pytest.mark.parametrize("damage", ["bit_flip", "huge_value", "extra_group", "state_json"])
def test_damage_in_every_kept_round_is_refused_and_changes_nothing(three, damage: str) -> None:
    stopped = _stopped(three, end=2)
    ckpt = stopped / "checkpoint"
    for rnd in (1, 2):
        tensors = ckpt / f"round-{rnd:06d}.safetensors"
        if damage == "bit_flip":
            _flip_a_bit(tensors)
        elif damage in ("huge_value", "extra_group"):
            flat = st_load(tensors.read_bytes())
            if damage == "huge_value":
                key = next(iter(flat))
                flat[key] = flat[key].clone().fill_(1e30)
            else:
                flat["adapters::intruder::w"] = torch.ones(3)
            tensors.write_bytes(st_save(flat))
        else:
            (ckpt / f"round-{rnd:06d}.json").write_bytes(bytes(range(256)))
    before = {p.name: p.read_bytes() for p in stopped.rglob("*") if p.is_file()}
    with pytest.raises(FedpeftError, match="cannot be resumed: no checkpoint verifies"):
        run_local(three, resume=stopped)
    after = {p.name: p.read_bytes() for p in stopped.rglob("*") if p.is_file()}
    assert after == before


def test_a_checkpoint_of_another_run_with_the_same_shapes_is_refused(three) -> None:
    other = run_local(three.model_copy(update={"run": three.run.model_copy(update={"seed": 1})}))
    stopped = _stopped(three, end=1)
    shutil.rmtree(stopped / "checkpoint")
    shutil.copytree(other.run_dir / "checkpoint", stopped / "checkpoint")
    with pytest.raises(FedpeftError, match="written for another configuration"):
        run_local(three, resume=stopped)


def test_resume_with_fewer_rounds_than_done_is_refused(three) -> None:
    stopped = _stopped(three, end=2)
    config = (stopped / "config.toml").read_text()
    fewer = three.model_copy(update={"run": three.run.model_copy(update={"rounds": 1})})
    with pytest.raises(FedpeftError, match="completed 2 rounds but `run.rounds` is 1"):
        run_local(fewer, resume=stopped)
    assert (stopped / "config.toml").read_text() == config


def test_other_format_versions_are_refused(three) -> None:
    stopped = _stopped(three, end=1)
    ckpt = stopped / "checkpoint"
    for manifest in ckpt.glob("*.manifest.json"):
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 99}))
    with pytest.raises(FedpeftError, match="format 99 but this fedpeft reads formats 2–3"):
        run_local(three, resume=stopped)
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"round": 1, "extra": {}}))  # stop 9's format
    with pytest.raises(FedpeftError, match="format 1"):
        run_local(three, resume=stopped)


def test_only_the_two_newest_rounds_are_kept(three) -> None:
    root = run_local(three).run_dir
    assert RunStore(root).checkpoints.rounds() == [3, 2]
    assert len(list((root / "checkpoint").iterdir())) == 6


def test_server_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    from fedpeft.allocation import GainEstimator, make_candidate

    gain = GainEstimator().update(make_candidate("lora", {"r": 4}), 0.25)
    state = ServerState(
        {"lora": {"a": torch.arange(6.0).reshape(2, 3)}, "bitfit": {"b": torch.ones(2)}},
        {"lora": {"m/a": torch.zeros(2, 3)}},
        round=4,
        main="lora",
        examples={"lora": 30, "bitfit": 12},
        members={"lora": (make_candidate("lora", {"r": 4}),)},
        gain=gain,
        last_accuracy={"lora": 0.5},
        clusters={3: 1},
        sim_clock_s=12.5,
        controls={"lora": {"a": torch.full((2, 3), -0.5)}},
    )
    folder = Checkpoints(tmp_path / "ck", "fp")
    folder.save(state)
    back = folder.load()
    assert back.to_json() == state.to_json() and back.to_json()["format"] == STATE_FORMAT
    for group in state.adapters:
        _same(back.adapters[group], state.adapters[group])
    _same(back.optimizer["lora"], state.optimizer["lora"])
    _same(back.controls["lora"], state.controls["lora"])


def test_a_format_2_checkpoint_reads_as_one_without_controls(tmp_path: Path) -> None:
    """Format 3 added SCAFFOLD's server controls; a format-2 checkpoint (written before them)
    still verifies and resumes with none."""
    state = ServerState({"global": {"a": torch.ones(2)}}, round=2)
    folder = Checkpoints(tmp_path / "ck", "fp")
    folder.save(state)
    ckpt = tmp_path / "ck"
    raw = json.loads((ckpt / "round-000002.json").read_text())
    del raw["control_groups"]
    meta = (json.dumps({**raw, "format": 2}, indent=2, sort_keys=True) + "\n").encode()
    (ckpt / "round-000002.json").write_bytes(meta)
    manifest_path = ckpt / "round-000002.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 2
    manifest["files"]["round-000002.json"] = hashlib.sha256(meta).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    back = folder.load()
    assert back.round == 2 and back.controls == {}
    _same(back.adapters["global"], state.adapters["global"])


def test_a_checkpoint_fingerprinted_with_its_input_paths_still_resumes(tmp_path: Path) -> None:
    """Before 2026-12-07 the fingerprint covered the input files' paths; now only whether
    one is given counts (a project moved with its data resumes), and checkpoints of either
    kind verify — an old one also after a resume gave its moved file a new place."""
    from fedpeft.config import load_config
    from fedpeft.config.loading import accepted_fingerprints, config_fingerprint

    cfg = load_config(overrides=["data.train_file='/a/x.csv'", "profiles.file='/a/t.toml'"])
    moved = load_config(overrides=["data.train_file='/b/x.csv'", "profiles.file='/b/t.toml'"])
    new, legacy = accepted_fingerprints(cfg)
    assert new == config_fingerprint(moved) != legacy != accepted_fingerprints(moved)[1]
    state = ServerState({"global": {"a": torch.ones(2)}}, round=2)
    Checkpoints(tmp_path / "ck", legacy).save(state)  # as written before
    assert Checkpoints(tmp_path / "ck", accepted_fingerprints(cfg)).load().round == 2
    assert Checkpoints(tmp_path / "ck", accepted_fingerprints(moved, cfg)).load().round == 2
    with pytest.raises(FedpeftError, match="written for another configuration"):
        Checkpoints(tmp_path / "ck", accepted_fingerprints(moved)).load()
    seeded = load_config(overrides=["data.train_file='/a/x.csv'", "run.seed=1"])
    assert config_fingerprint(seeded) != config_fingerprint(cfg)  # what it held still counts
    with_eval = load_config(overrides=["data.train_file='/a/x.csv'", "data.eval_file='/a/y'"])
    no_eval = load_config(overrides=["data.train_file='/a/x.csv'"])
    assert config_fingerprint(with_eval) != config_fingerprint(no_eval)  # given or not counts
    plain = load_config()  # naming no input file: the fingerprint it always had
    assert accepted_fingerprints(plain) == (config_fingerprint(plain),) * 2


def test_stray_newer_manifests_do_not_hide_a_valid_round(three, caplog) -> None:
    """Two unreadable manifests numbered above the kept rounds (no crash writes those): the
    newest round that verifies is still found, not only among the two newest manifests."""
    full = run_local(three)
    stopped = _stopped(three, end=2)
    for rnd in (3, 4):
        (stopped / "checkpoint" / f"round-{rnd:06d}.manifest.json").write_bytes(b"{")
    resumed = run_local(three, resume=stopped)
    assert "checkpoint of round 4 is damaged" in caplog.text
    assert "resuming from the previous valid checkpoint, round 2" in caplog.text
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    _same(resumed.state, full.state)
    assert RunStore(stopped).checkpoints.rounds() == [3, 2]  # the stray ones pruned


def test_a_rounds_log_lines_are_synced_as_written(tmp_path: Path, monkeypatch) -> None:
    """`--resume` requires metrics.jsonl to hold every checkpointed round; the checkpoint
    is synced (write_atomic), so the round's log lines, written before it, must be synced
    too: else a power loss could keep the checkpoint, lose the line, and leave a run that
    cannot resume."""
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = RunStore(tmp_path)
    record = RoundRecord(1, [0], 1, 0, 10, 10, 0.5, {}, 1.0, 0.0, 0.5)
    store.append_round(record)
    store.append_jsonl("personal.jsonl", [{"round": 1}])
    logs = ("metrics.jsonl", "clients.jsonl", "personal.jsonl")
    assert synced == [(tmp_path / name).stat().st_ino for name in logs]
