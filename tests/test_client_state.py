"""Client states: kept per client on the client's side, tagged by the round that wrote them,
so a resumed run reads what the uninterrupted one read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedpeft.client.state import ClientStateStore, pack, unpack


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


def test_an_in_memory_store_lends_what_it_holds_and_forgets_it() -> None:
    """A Flower node's states are lent to the process's store for one message: what it
    holds after the message is handed back (the two newest rounds), then forgotten."""
    store = ClientStateStore(per_run=True)
    store.replace(0, {1: {"c": torch.ones(2)}}, "run")
    assert torch.equal(store.load(0, 2, "run")["c"], torch.ones(2))
    store.save(0, 2, {"c": torch.zeros(2)}, "run")
    store.save(0, 3, {"c": torch.full((2,), 3.0)}, "run")
    held = store.held(0, "run")
    assert sorted(held) == [2, 3] and torch.equal(held[3]["c"], torch.full((2,), 3.0))
    store.replace(0, {}, "run")
    assert store.held(0, "run") == {} and store.load(0, 9, "run") == {}
    assert store._memory == {}  # nothing of the client is left in the process
    with pytest.raises(ValueError, match="in-memory"):
        ClientStateStore(Path("somewhere")).held(0)


def test_exports_go_beside_the_states_or_under_their_own_folder(tmp_path: Path) -> None:
    assert ClientStateStore(tmp_path).client_folder(4) == tmp_path / "4"
    lent = ClientStateStore(per_run=True, exports=tmp_path / "node")
    assert lent.client_folder(4, "run") == tmp_path / "node" / "run" / "4"
    assert ClientStateStore().client_folder(4) is None


def test_states_by_round_pack_into_one_flat_state_and_back() -> None:
    kept = {
        2: {"personal/x": torch.ones(1), "ef/y": torch.zeros(2)},
        13: {"personal/x": torch.ones(1) * 2},
    }
    flat = pack(kept)
    assert sorted(flat) == ["000002/ef/y", "000002/personal/x", "000013/personal/x"]
    back = unpack(flat)
    assert back.keys() == kept.keys()
    assert all(torch.equal(back[r][k], kept[r][k]) for r in kept for k in kept[r])
    for bad in ("personal/x", "2/personal/x", "000002/", "00000x/a"):
        with pytest.raises(ValueError, match="round"):
            unpack({bad: torch.ones(1)})
