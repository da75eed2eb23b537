"""Secure aggregation on Flower's simulation engine: fedpeft's SecAgg+ stages travel as
``train`` messages, each node's round secrets stay in its ``Context`` state, and the
global is the one the in-process runtime gives with secure aggregation (and FedAvg gives
in the clear), also when a client is lost after masking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from flwr.app import Context, Message, RecordDict  # noqa: E402

from fedpeft.client.secagg import (  # noqa: E402
    KIND_MASKED_INPUT,
    KIND_SETUP,
    KIND_SHARE_KEYS,
    SECAGG_KINDS,
)
from fedpeft.config import config_to_toml  # noqa: E402
from fedpeft.privacy.secagg import FixedPoint, ProtocolError, SecAggServer  # noqa: E402
from fedpeft.privacy.secagg.messages import EncryptedShares, PublicKeys, decode, encode  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.client_app import Node, load_secrets, secure_stage  # noqa: E402
from fedpeft.runtime.flower.codec import (  # noqa: E402
    content_to_secagg,
    instruction_fields,
    secagg_content,
)
from fedpeft.runtime.flower.host import handle, pack_secrets, unpack_secrets  # noqa: E402
from fedpeft.runtime.flower.pool import FlowerClientPool  # noqa: E402
from fedpeft.runtime.flower.process import client_process  # noqa: E402
from fedpeft.runtime.flower.sim import run_flower_sim  # noqa: E402
from fedpeft.runtime.local import run_local  # noqa: E402
from fedpeft.runtime.local.simulator import client_pool  # noqa: E402
from fedpeft.server.task import Task  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402

SECURE = "privacy.secure_aggregation=true"
# a random head in every run: secure runs start there, plain ones would start from LDA
BASE = ("data.num_clients=4", "data.train_size=96", "server.head_init='random'")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=0, atol=atol)


def _on_the_wire(monkeypatch, lose: dict[str, set[int]]) -> list[tuple[str, set[str]]]:  # type: ignore[no-untyped-def]
    """Records each secure-aggregation reply's record names as the server receives it, and
    loses the replies of ``lose[kind]``'s clients (they did the stage; the server never
    hears of it)."""
    seen: list[tuple[str, set[str]]] = []
    real = FlowerClientPool._payload

    def payload(self, reply: Message, ins: TrainInstruction, layout: Any) -> bytes | Exception:  # type: ignore[no-untyped-def]
        if ins.kind in SECAGG_KINDS and not reply.has_error():
            seen.append((ins.kind, set(reply.content.keys())))
        if ins.client_id in lose.get(ins.kind, set()):
            return ConnectionError(f"lost at {ins.kind}")
        return real(self, reply, ins, layout)

    monkeypatch.setattr(FlowerClientPool, "_payload", payload)
    return seen


def test_secure_rounds_on_flower_give_the_in_process_secure_and_plain_globals(
    tiny, monkeypatch
) -> None:
    cfg = tiny(*BASE, SECURE)
    seen = _on_the_wire(monkeypatch, lose={})
    flower = run_flower_sim(cfg, workers=2)
    local = run_local(tiny(*BASE, SECURE, "run.name='local'"))
    plain = run_local(tiny(*BASE, "run.name='plain'"))
    _close(flower.state, local.state, atol=1e-6)
    _close(flower.state, plain.state, atol=1e-6 + FixedPoint().rounding_error(4))
    assert any(v.abs().sum() > 0 for k, v in flower.state.items() if "lora_B" in k)
    assert [r["accepted"] for r in flower.rounds] == [4, 4]
    for ours, theirs in zip(flower.rounds, local.rounds, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        info = ours["secure_aggregation"]
        assert info["survivors"] == 4 and info["dropped_after_keys"] == []
        # the same protocol messages as in process: the same bytes per stage
        assert info["bytes_up"] == theirs["secure_aggregation"]["bytes_up"]
        assert info["bytes_down"] == theirs["secure_aggregation"]["bytes_down"]
    assert all(c["status"] == "ok" for c in _lines(flower.run_dir / "clients.jsonl"))
    # 4 stages × 4 clients × 2 rounds, each reply the protocol message alone: no secrets,
    # no update, no count in the clear
    assert len(seen) == 32
    assert all(names == {keys.SECAGG, keys.HELLO} for _, names in seen)
    stats = json.loads((flower.run_dir / "flower.json").read_text())
    assert stats["wire_bytes_up"] > stats["fedpeft_bytes_up"] == flower.summary["bytes_up_total"]


def test_a_client_lost_after_masking_is_recovered_on_flower_under_central_dp(
    tiny, monkeypatch
) -> None:
    """Client 0 trains and masks but its masked vector never arrives: the other three's
    shares of its mask key (t = 2 of 3) remove its masks. Clients clip before masking and
    the server adds the noise once to the sum: the global is central DP's over clients
    1–3, as an in-process round in the clear without client 0 gives (same noise, same ε)."""
    dp = ("privacy.mode='central'", "privacy.noise_multiplier=1.0", "privacy.clip_norm=0.05")
    extra = (*BASE, "run.rounds=1", *dp)
    _on_the_wire(monkeypatch, lose={KIND_MASKED_INPUT: {0}})
    flower = run_flower_sim(tiny(*extra, SECURE), workers=2)

    def without_client_0(task: Task):  # type: ignore[no-untyped-def]
        pool = client_pool(task)
        real = pool.fit

        def fit(ins: TrainInstruction, payload: bytes) -> bytes:
            reply = real(ins, payload)
            if ins.client_id == 0:
                raise ConnectionError("lost")
            return reply

        pool.fit = fit  # type: ignore[method-assign]
        return pool

    plain = run_local(tiny(*extra, "run.name='plain'", "run.workers=1"), pool=without_client_0)
    _close(flower.state, plain.state, atol=1e-5)
    (row,) = flower.rounds
    assert row["privacy"]["epsilon"] == plain.rounds[0]["privacy"]["epsilon"] > 0
    assert row["accepted"] == 3
    info = row["secure_aggregation"]
    assert info["survivors"] == 3 and info["dropped_after_keys"] == [0]
    assert info["threshold"] == 2
    clients = {c["client_id"]: c for c in _lines(flower.run_dir / "clients.jsonl")}
    assert clients[0]["status"] == "failed" and "masked_input" in clients[0]["reason"]
    assert all(clients[c]["status"] == "ok" for c in (1, 2, 3))


def _stage_ins(kind: str, client: int, rnd: int = 1) -> TrainInstruction:
    return TrainInstruction(rnd, client, 1, None, 4, 0.1, 0.0, 0.0, 0, kind=kind, run_id="r1")


def test_a_node_keeps_its_round_secrets_in_its_context_and_the_process_none(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """The ClientApp's handler for the first two stages, called in this process for four
    nodes: after each stage every node's secrets are in its own Context state and the
    process's store is empty (so any worker process can answer a node's next stage); a node
    whose Context lost them cannot go on; the client host gets and returns them with the
    request."""
    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    text = config_to_toml(tiny(*BASE, SECURE))
    store = client_process(text).pool.secrets
    server = SecAggServer(1, [0, 1, 2, 3], 10)
    contexts = {u: _context(u) for u in range(4)}

    def stage(kind: str, u: int, message: object, context: Context | None = None) -> bytes:
        ins, node = _stage_ins(kind, u), Node(text, u, None, False)
        out = secure_stage(secagg_content(encode(message)), context or contexts[u], node, ins)
        assert set(out.keys()) == {keys.SECAGG, keys.HELLO}
        return content_to_secagg(out)

    public = {u: decode(stage(KIND_SETUP, u, m), PublicKeys) for u, m in server.setup().items()}
    assert store._kept == {}
    after_setup = {u: load_secrets(c) for u, c in contexts.items()}
    assert all(list(s) == ["secagg/memory"] for s in after_setup.values())
    books = server.on_public_keys(public)
    shares = {u: decode(stage(KIND_SHARE_KEYS, u, b), EncryptedShares) for u, b in books.items()}
    assert store._kept == {} and len(server.on_encrypted_shares(shares)) == 4
    for u, c in contexts.items():  # the memory now holds the key book as well
        assert not torch.equal(load_secrets(c)["secagg/memory"], after_setup[u]["secagg/memory"])
    with pytest.raises(ProtocolError, match="no secure-aggregation state kept"):
        stage(KIND_SHARE_KEYS, 0, books[0], context=_context(0))
    # the client host: the secrets travel in the request's header and come back in its reply
    kept = load_secrets(contexts[0])
    assert torch.equal(unpack_secrets(pack_secrets(kept))["secagg/memory"], kept["secagg/memory"])
    setup2 = SecAggServer(2, [0, 1, 2], 10).setup()[1]
    header = {"op": "fit", "config": text, "own": False, "secrets": "",
              "instruction": instruction_fields(_stage_ins(KIND_SETUP, 1, rnd=2))}  # fmt: skip
    info, reply = handle(json.loads(json.dumps(header)), encode(setup2))  # as on the socket
    assert decode(reply, PublicKeys).client_id == 1 and store._kept == {}
    assert list(unpack_secrets(info["secrets"])) == ["secagg/memory"]


def _context(partition: int) -> Context:
    config = {keys.NODE_PARTITION: partition}
    return Context(run_id=1, node_id=partition + 1, node_config=config, state=RecordDict(),
                   run_config={})  # fmt: skip
