"""The server's defaults against hostile or broken clients: replies bound to their
instruction, an update-norm guard that needs no tuning, and a quorum per round."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedpeft.client import META_CLIENT_ID
from fedpeft.compression import decode, encode
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.server.task import build_task
from fedpeft.types import TrainInstruction


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


class _Tamper:
    """The real pool, with one client's reply altered on its way back."""

    def __init__(self, inner: LocalClientPool, mode: str) -> None:
        self.inner, self.mode = inner, mode
        self.last: dict[int, bytes] = {}

    def num_examples(self, client_id: int) -> int | None:
        return self.inner.num_examples(client_id)

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        cid = instruction.client_id
        if self.mode == "offline":
            from fedpeft.errors import ClientSkipped
            from fedpeft.types import ClientStatus

            raise ClientSkipped(ClientStatus.OFFLINE, "switched off by the test")
        if self.mode == "dead" and cid == 1:
            raise ConnectionError("gone")
        reply = self.inner.fit(instruction, payload)
        if instruction.round == 0:  # the head's feature statistics: tampered with elsewhere
            return reply
        if self.mode == "relabel" and cid == 0 and 1 in self.last:
            state, meta = decode(self.last[1])  # client 1's earlier reply, claimed as client 0's
            meta[META_CLIENT_ID] = 0
            meta["round"] = instruction.round
            return encode(state, meta)
        if self.mode == "replay" and cid == 0 and 0 in self.last:
            state, meta = decode(self.last[0])  # its own previous round's reply, replayed
            meta["round"] = instruction.round
            return encode(state, meta)
        self.last[cid] = reply
        if self.mode == "boost" and cid == 0:
            state, meta = decode(reply)
            start, _ = decode(payload)
            boosted = {k: start[k] + 1000 * (v - start[k]) for k, v in state.items()}
            return encode(boosted, meta)
        return reply


def _with(mode: str):  # type: ignore[no-untyped-def]
    return lambda task: _Tamper(LocalClientPool(task), mode)


def test_relabelled_and_replayed_replies_are_rejected(tiny) -> None:
    for mode in ("relabel", "replay"):
        root = run_local(tiny("run.rounds=2", "data.num_clients=2"), pool=_with(mode)).run_dir
        client0 = [c for c in _lines(root / "clients.jsonl") if c["client_id"] == 0]
        assert client0[0]["status"] == "ok", mode  # round 1: nothing to replay yet
        assert client0[1]["status"] == "rejected" and "nonce" in client0[1]["reason"], mode


def test_a_boosted_update_is_rejected_by_the_default_guard(tiny) -> None:
    cfg = tiny("run.rounds=1", "data.num_clients=4")
    clients = _lines(run_local(cfg, pool=_with("boost")).run_dir / "clients.jsonl")
    by_id = {c["client_id"]: c for c in clients}
    assert by_id[0]["status"] == "rejected" and "server.norm_guard" in by_id[0]["reason"]
    assert all(by_id[c]["status"] == "ok" for c in (1, 2, 3))
    off = tiny("run.rounds=1", "data.num_clients=4", "server.norm_guard=0")
    clients = _lines(run_local(off, pool=_with("boost")).run_dir / "clients.jsonl")
    assert all(c["status"] == "ok" for c in clients)  # switched off: accepted as before


def test_no_quorum_leaves_the_global_unchanged_and_says_so(tiny) -> None:
    # a random head: the LDA head would be set at round 0, before any quorum is needed
    cfg = tiny(
        "run.rounds=2", "data.num_clients=2", "server.min_clients=2", "server.head_init='random'"
    )
    result = run_local(cfg, pool=_with("dead"))
    assert [r["quorum"] for r in result.rounds] == [False, False]
    assert all(r["accepted"] == 1 for r in result.rounds)
    initial = get_adapter_state(build_task(cfg).model)
    for key, value in initial.items():
        assert torch.equal(result.state[key], value.cpu()), key


def test_every_client_offline_runs_to_the_end_and_reports(tiny) -> None:
    from fedpeft.report import write_report

    result = run_local(tiny("run.rounds=2"), pool=_with("offline"))
    assert [r["accepted"] for r in result.rounds] == [0, 0]
    assert [r["quorum"] for r in result.rounds] == [False, False]
    clients = _lines(result.run_dir / "clients.jsonl")
    assert all(c["status"] == "offline" and c["bytes_down"] == 0 for c in clients)
    assert write_report(result.run_dir).is_file()
