"""Client states: kept per client on the client's side, tagged by the round that wrote them,
so a resumed run reads what the uninterrupted one read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedpeft.client.state import ClientStateStore


@pytest.mark.parametrize("on_disk", [True, False])
def test_load_takes_the_newest_state_before_the_round(tmp_path: Path, on_disk: bool) -> None:
    store = ClientStateStore(tmp_path / "clients" if on_disk else None)
    assert store.load(3, 1) == {}
    for rnd in (1, 2, 4):
        store.save(3, rnd, {"c": torch.full((2,), float(rnd))})
    assert torch.equal(store.load(3, 5)["c"], torch.full((2,), 4.0))
    assert torch.equal(store.load(3, 4)["c"], torch.full((2,), 2.0))  # round 4 crashed: ignored
    assert store.load(3, 2) == {}  # round 1's was pruned: only the two newest are kept
    assert store.load(7, 5) == {}  # another client's
    store.save(3, 5, {})  # nothing to keep: nothing written
    assert torch.equal(store.load(3, 6)["c"], torch.full((2,), 4.0))


def test_a_damaged_state_file_falls_back_to_the_older_one(tmp_path: Path, caplog) -> None:
    store = ClientStateStore(tmp_path)
    store.save(0, 1, {"c": torch.ones(3)})
    store.save(0, 2, {"c": torch.zeros(3)})
    (tmp_path / "0" / "state-000002.safetensors").write_bytes(b"garbage")
    assert torch.equal(store.load(0, 3)["c"], torch.ones(3))
    assert "unreadable" in caplog.text
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == [
        "state-000001.safetensors",
        "state-000002.safetensors",
    ]  # no temporaries left behind
