"""A client's kept states on its own disk (``client.snapshot``): read back bit for bit, and
never trusted when the file, its manifest, its run or its round disagree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fedpeft.client.snapshot import (
    MANIFEST,
    SnapshotManifest,
    copy_states,
    load_snapshot,
    same_states,
    save_snapshot,
)

RUN = "tiny-20250101-000000"


def _kept() -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        2: {
            "personal/classifier.weight": torch.randn(2, 8, generator=g),
            "ef/a.lora_A.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        },
        3: {"scaffold/c_i/a.lora_B.weight": torch.randn(4, 3, generator=g)},
    }


def _data(folder: Path) -> Path:
    (path,) = folder.glob("kept-*.safetensors")
    return path


def test_a_snapshot_reads_back_bit_for_bit_and_only_one_file_is_left(tmp_path: Path) -> None:
    save_snapshot(tmp_path, RUN, 5, {1: {"x": torch.ones(2)}})
    save_snapshot(tmp_path, RUN, 5, _kept())
    back = load_snapshot(tmp_path, RUN, 5, before_round=4)
    assert same_states(back, _kept()) and not same_states(back, {1: {"x": torch.ones(2)}})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [_data(tmp_path).name, MANIFEST]  # the earlier data file is gone
    manifest = SnapshotManifest.from_json(json.loads((tmp_path / MANIFEST).read_text()))
    assert (manifest.run_id, manifest.client_id, manifest.round) == (RUN, 5, 3)
    assert manifest.rounds == (2, 3) and manifest.file == names[0]
    save_snapshot(tmp_path, RUN, 5, {})  # nothing kept: nothing left
    assert list(tmp_path.iterdir()) == [] and load_snapshot(tmp_path, RUN, 5, 9) == {}


def test_rounds_the_server_has_not_reached_are_dropped_with_a_reason(tmp_path, caplog) -> None:
    save_snapshot(tmp_path, RUN, 0, _kept())
    with caplog.at_level(logging.WARNING, "fedpeft.client"):
        back = load_snapshot(tmp_path, RUN, 0, before_round=3)  # the server resumed at 2
    assert same_states(back, {2: _kept()[2]})
    assert "round(s) 3 dropped" in caplog.text and "server is at round 3" in caplog.text
    assert load_snapshot(tmp_path, RUN, 0, before_round=2) == {}


def _tamper_data(folder: Path) -> None:
    path = _data(folder)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of a tensor
    path.write_bytes(bytes(data))


def _rehash(folder: Path, **changes: object) -> None:
    raw = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**raw, **changes}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_tamper_data, "sha256 does not match"),
        (lambda f: _data(f).unlink(), "No such file"),
        (lambda f: (f / MANIFEST).write_text("{not json"), "Expecting property name"),
        (lambda f: _rehash(f, version=2), "manifest version 2"),
        (lambda f: _rehash(f, file="../../x"), "not a kept-state file name"),
        (lambda f: _rehash(f, round=True), "must be integers"),
        (lambda f: _rehash(f, rounds=[2]), "not the newest"),
        (lambda f: _rehash(f, run_id="other-run"), "belongs to run 'other-run'"),
        (lambda f: _rehash(f, client_id=1), "client 1"),
    ],
)
def test_a_damaged_or_foreign_snapshot_is_ignored_with_a_warning(
    tmp_path: Path, caplog, damage, reason: str
) -> None:
    save_snapshot(tmp_path, RUN, 0, _kept())
    damage(tmp_path)
    with caplog.at_level(logging.WARNING, "fedpeft.client"):
        assert load_snapshot(tmp_path, RUN, 0, before_round=9) == {}
    assert "is ignored, the client starts it afresh" in caplog.text and reason in caplog.text


def test_a_snapshot_of_another_run_or_client_is_not_read(tmp_path: Path, caplog) -> None:
    save_snapshot(tmp_path, RUN, 0, _kept())
    with caplog.at_level(logging.WARNING, "fedpeft.client"):
        assert load_snapshot(tmp_path, "tiny-20250101-000001", 0, 9) == {}
        assert load_snapshot(tmp_path, RUN, 1, 9) == {}
    assert caplog.text.count("is ignored") == 2
    assert same_states(load_snapshot(tmp_path, RUN, 0, 9), _kept())  # untouched


def test_a_file_whose_metadata_or_rounds_disagree_with_its_valid_hash_is_refused(
    tmp_path: Path, caplog
) -> None:
    """A data file swapped for another client's (its manifest's hash updated to match)."""
    other = tmp_path / "other"
    save_snapshot(other, RUN, 1, _kept())
    save_snapshot(tmp_path, RUN, 0, _kept())
    swapped = _data(other)
    raw = json.loads((other / MANIFEST).read_text())
    (tmp_path / swapped.name).write_bytes(swapped.read_bytes())
    _rehash(tmp_path, file=swapped.name, sha256=raw["sha256"])
    with caplog.at_level(logging.WARNING, "fedpeft.client"):
        assert load_snapshot(tmp_path, RUN, 0, 9) == {}
    assert "metadata" in caplog.text and "disagrees with the manifest" in caplog.text


def test_copies_share_no_tensor_and_comparisons_see_dtype_and_bits() -> None:
    kept = _kept()
    copy = copy_states(kept)
    assert same_states(copy, kept)
    copy[3]["scaffold/c_i/a.lora_B.weight"].add_(1e-3)  # in place, as training may
    assert not same_states(copy, kept)
    as_float = {2: {**kept[2], "ef/a.lora_A.weight": kept[2]["ef/a.lora_A.weight"].float()}}
    assert not same_states({**kept, **as_float}, kept)
    assert not same_states({2: kept[2]}, kept) and same_states({}, {})
