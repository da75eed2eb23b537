"""What a Flower client keeps between rounds lives in its node's ClientApp Context state:
through the Context record and the client host's frames unchanged (bf16 bit-exact); a
snapshot on the node's disk carries it into a resumed run (a new Flower run)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from fedpeft.client.snapshot import MANIFEST  # noqa: E402
from fedpeft.compression import encode  # noqa: E402
from fedpeft.errors import FedpeftError  # noqa: E402
from fedpeft.peft.io import WEIGHTS  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.client_app import load_kept, save_kept  # noqa: E402
from fedpeft.runtime.flower.host import join_kept, split_kept  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402


def _kept() -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    head = torch.randn(2, 8, generator=g)
    return {
        1: {
            "personal/classifier.weight": head,
            "ef/a.lora_A.weight": torch.randn(3, 4, generator=g),
        },
        2: {"personal/classifier.weight": head.to(torch.bfloat16) * 3},
    }


def _same(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys() and all(a[r].keys() == b[r].keys() for r in a)
    for r in a:
        for k in a[r]:
            assert a[r][k].dtype == b[r][k].dtype and torch.equal(a[r][k], b[r][k])


def test_kept_states_live_in_the_context_state_and_are_forgotten_when_empty() -> None:
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert load_kept(context) == {}
    save_kept(context, _kept())
    assert list(context.state) == [keys.KEPT]
    _same(load_kept(context), _kept())
    save_kept(context, {})
    assert keys.KEPT not in context.state and load_kept(context) == {}


def test_a_client_host_that_is_down_or_dies_is_one_sentence_for_the_nodes_operator(
    tmp_path: Path,
) -> None:
    """A node configured with a host-socket whose host never started, or that closes the
    connection mid-message, fails the message with a sentence naming the host, not errno."""
    import socket
    import threading

    from fedpeft.runtime.flower.host import request

    missing = str(tmp_path / "absent.sock")
    with pytest.raises(RuntimeError, match=r"client host at .*absent\.sock did not answer"):
        request(missing, {"op": "hello"})
    dying = str(tmp_path / "dying.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(dying)
    server.listen(1)
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match=r"client host at .*dying\.sock did not answer"):
            request(dying, {"op": "hello"})
    finally:
        server.close()


def test_kept_states_ride_behind_the_payload_to_the_client_host_and_back() -> None:
    payload = encode({"x": torch.ones(2)}, {"round": 1})
    tail, body = join_kept(payload, _kept())
    assert tail > 0 and body.startswith(payload)
    back, kept = split_kept(body, tail)
    assert back == payload
    _same(kept, _kept())
    assert join_kept(payload, {}) == (0, payload) and split_kept(payload, 0) == (payload, {})
    for bad in (-1, len(body) + 1, True, "3"):
        with pytest.raises(ValueError, match="kept-state length"):
            split_kept(body, bad)


def test_a_resumed_flower_run_continues_each_clients_kept_state(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """Round 1 on Flower, then `--resume` for round 2 (a new Flower run, its Contexts empty):
    each node reads its client's personal B and error-feedback residual back from its disk,
    so the run ends as the uninterrupted in-process one — which a resume whose clients lost
    their kept state does not."""
    pytest.importorskip("ray")
    from fedpeft.runtime.flower.sim import run_flower_sim
    from fedpeft.runtime.local import run_local

    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    sets = ("personalization.mode='lora_b'", "personalization.eval_every=1")
    cfg = tiny("data.client_test_fraction=0.25", *sets, "compression.bits_up=4")
    one = cfg.model_copy(update={"run": cfg.run.model_copy(update={"rounds": 1})})
    full = run_local(cfg)
    first = run_flower_sim(one, workers=2)
    (config_dir,) = (tmp_path / "node").iterdir()
    run = config_dir / first.run_dir.name
    for cid in (0, 1):
        manifest = json.loads((run / str(cid) / MANIFEST).read_text())
        assert (manifest["run_id"], manifest["client_id"], manifest["round"]) == (run.name, cid, 1)
    resumed = run_flower_sim(cfg, resume=first.run_dir, workers=2)
    assert resumed.run_dir == first.run_dir
    assert list((tmp_path / "node").iterdir()) == [config_dir]  # the same <config> folder
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    ours, theirs = _personal(resumed.run_dir), _personal(full.run_dir)
    assert [r["round"] for r in ours] == [r["round"] for r in theirs] == [1, 1, 2, 2]
    for a, b in zip(ours, theirs, strict=True):
        assert a["models"]["personal"]["accuracy"] == b["models"]["personal"]["accuracy"]
        assert a["models"]["personal"]["loss"] == pytest.approx(b["models"]["personal"]["loss"])
    for cid in (0, 1):  # the B each node exported after round 2 continued its round-1 B
        manifest = json.loads((run / str(cid) / MANIFEST).read_text())
        assert manifest["round"] == 2 and manifest["rounds"] == [1, 2]
        mine = load_file(run / str(cid) / "adapter" / WEIGHTS)
        local = load_file(full.run_dir / "clients" / str(cid) / "adapter" / WEIGHTS)
        for k in local:
            torch.testing.assert_close(mine[k], local[k], rtol=0, atol=1e-6)
    # the control: an in-process resume whose clients lost their kept state ends elsewhere
    stopped = run_local(one)
    shutil.rmtree(stopped.run_dir / "clients")
    afresh = run_local(cfg, resume=stopped.run_dir)
    assert any(not torch.allclose(afresh.state[k], v, atol=1e-4) for k, v in full.state.items())


def _personal(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "personal.jsonl").read_text().splitlines()]


def test_a_new_context_reads_the_snapshot_once_and_only_rounds_the_server_reached(
    tiny, tmp_path: Path, monkeypatch, caplog
) -> None:
    """The ClientApp's side, without an engine: a message that changes the kept states
    writes their snapshot; a fresh Context (a resumed run) reads it at its first message
    for the run, dropping rounds the server has not reached, and never again after."""
    from fedpeft.config import config_to_toml
    from fedpeft.runtime.flower import client_app
    from fedpeft.runtime.flower.process import client_folder

    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    me = client_app.Node(config_to_toml(tiny()), 0, None, False)
    ins = TrainInstruction(3, 0, 1, None, 8, 0.1, 0.0, 0.0, 0, run_id="tiny-20250101-000000")
    old = _context()
    client_app.keep_kept(old, me, ins, {}, _kept())
    folder = client_folder(me.text, ins.run_id, 0)
    assert (folder / MANIFEST).is_file()
    _same(client_app.restore_kept(_context(), me, ins), _kept())  # rounds 1 and 2 < 3
    with caplog.at_level(logging.WARNING, "fedpeft.client"):
        new = _context()
        _same(client_app.restore_kept(new, me, replace(ins, round=2)), {1: _kept()[1]})
    assert "round(s) 2 dropped" in caplog.text
    _same(client_app.load_kept(new), {1: _kept()[1]})  # in the Context even if the message fails
    client_app.save_kept(new, {})
    assert client_app.restore_kept(new, me, replace(ins, round=2)) == {}  # consulted once
    evaluate = client_app.restore_kept(_context(), me, replace(ins, round=2), evaluate=True)
    _same(evaluate, _kept())  # an evaluate message reads its own round's states too
    assert client_app.restore_kept(_context(), me, replace(ins, run_id="other-run")) == {}
    before = client_app.load_kept(old)  # unchanged states: nothing is written
    (folder / MANIFEST).unlink()
    client_app.keep_kept(old, me, ins, before, before)
    assert not (folder / MANIFEST).exists()


def test_a_snapshot_that_cannot_be_written_is_removed_not_left_stale(
    tiny, tmp_path: Path, monkeypatch, caplog
) -> None:
    from fedpeft.config import config_to_toml
    from fedpeft.runtime.flower import client_app
    from fedpeft.runtime.flower.process import client_folder

    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    me = client_app.Node(config_to_toml(tiny()), 1, None, False)
    ins = TrainInstruction(2, 1, 1, None, 8, 0.1, 0.0, 0.0, 0, run_id="r")
    client_app.keep_kept(_context(), me, ins, {}, {1: _kept()[1]})
    folder = client_folder(me.text, "r", 1)
    assert (folder / MANIFEST).is_file()

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client_app, "save_snapshot", full)
    with caplog.at_level(logging.WARNING, "fedpeft.runtime.flower"):
        client_app.keep_kept(_context(), me, replace(ins, round=3), {1: _kept()[1]}, _kept())
    assert "was not written" in caplog.text and "No space left" in caplog.text
    assert list(folder.iterdir()) == []  # a resume starts it afresh, not from round 1's
    with pytest.raises(FedpeftError, match="plain name"):
        client_folder(me.text, "../elsewhere", 1)


def _context() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
