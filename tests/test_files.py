"""files.write_atomic: a finished file has the mode a plain open() would give it."""

import os
import stat
from pathlib import Path

import pytest

from fedpeft.files import write_atomic, write_json


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    """summary.json, config.toml, adapter weights and `predict --out` were 0600 (mkstemp's
    mode) beside 0644 logs, so a shared run folder's exported adapter was unreadable."""
    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_atomic(tmp_path / "preds.csv", b"text,predicted\n")
    write_json(tmp_path / "summary.json", {"a": 1})
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("preds.csv", "summary.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "preds.csv", "summary.json"]


def test_atomic_files_are_written_where_os_has_no_fchmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11 on Windows has no os.fchmod (3.13 added it): every write_atomic there
    (a run's config.toml first) ended in an AttributeError."""
    monkeypatch.delattr(os, "fchmod", raising=False)
    write_atomic(tmp_path / "config.toml", b"[run]\n")
    assert (tmp_path / "config.toml").read_bytes() == b"[run]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_a_clients_kept_states_stay_owner_only(tmp_path: Path) -> None:
    """A client's kept states (personal modules, SCAFFOLD's c_i) are learnt from its private
    data and never sent: when write_atomic began giving files the umask mode they became
    0644 beside the other files, readable by every user of a shared node."""
    import torch

    from fedpeft.client.snapshot import save_snapshot
    from fedpeft.client.state import ClientStateStore

    ClientStateStore(tmp_path / "states").save(3, 1, {"c": torch.ones(2)})
    save_snapshot(tmp_path / "node", "run-a", 3, {1: {"x": torch.ones(2)}})
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 3, written  # a state; a snapshot and its manifest
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
