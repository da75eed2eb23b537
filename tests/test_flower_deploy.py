"""A real deployment on this machine: SuperLink (control plane for loopback only) +
SuperNodes with TLS and pre-registered node keys, fedpeft submitted as the Flower App it is
(``flwr run <checkout>``).

One federation serves the module (starting it costs seconds): two registered SuperNodes
with a partition each and a client host, and a third that brings its own data file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from fedpeft.config import ExperimentConfig, config_to_toml  # noqa: E402
from fedpeft.peft.io import WEIGHTS  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.deploy import (  # noqa: E402
    FEDERATION,
    Deployment,
    free_port,
    project_app,
)
from fedpeft.runtime.local import run_local  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

TIMEOUT_S = 400.0


def _own_data(folder: Path) -> Path:
    """The third node's own file: 24 reviews in its own column names, labels as words."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site2.csv"
    words = ["negative", "positive"]
    path.write_text("review,sentiment\n" + "".join(f"film {i},{words[i % 2]}\n" for i in range(24)))
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = Deployment(tmp_path_factory.mktemp("flower"))
    try:
        d.start_superlink()
        for i in range(2):
            d.start_supernode(f"node{i}", i, d.node_key(f"node{i}"))
        own = {keys.NODE_DATA_FILE: str(_own_data(d.root / "site2")),
               keys.NODE_TEXT_COLUMN: "review", keys.NODE_LABEL_COLUMN: "sentiment"}  # fmt: skip
        d.start_supernode("node2", 2, d.node_key("node2"), host=False, node_config=own)
        yield d
    finally:
        d.close()


def _submit(d: Deployment, cfg: ExperimentConfig, **run_config: object) -> int:
    config = {
        keys.RUN_CONFIG_TOML: config_to_toml(cfg),
        keys.RUN_ROUND_TIMEOUT: 120.0,
        keys.RUN_CONNECT_TIMEOUT: 200.0,
        **run_config,
    }
    return d.submit(config)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _run_dir(cfg: ExperimentConfig) -> Path:
    (run,) = Path(cfg.run.output_dir).iterdir()
    return run


def test_two_supernodes_with_tls_and_auth_run_two_rounds(federation: Deployment) -> None:
    cfg = tiny_config(federation.root / "a")
    run_id = _submit(federation, cfg)
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    rounds, clients = _lines(root / "metrics.jsonl"), _lines(root / "clients.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["accepted"] == 2 for r in rounds)
    assert len(clients) == 4 and all(c["status"] == "ok" for c in clients)
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    stats = json.loads((root / "flower.json").read_text())
    assert sum(c["num_examples"] for c in stats["clients"].values()) == 64
    assert stats["client_weight"] == {"policy": "assigned", "max_client_examples": None}
    assert all(c["max_examples"] == c["num_examples"] for c in stats["clients"].values())
    assert stats["wire_bytes_up"] > stats["fedpeft_bytes_up"] > 0
    # a fresh flwr-clientapp process per message, yet one client host (one model load) each
    for c in stats["clients"].values():
        assert c["processes_seen"] == 1 and c["model_loads_in_last_process"] == 1


def test_a_node_with_its_own_data_joins_under_the_reported_policy_with_a_cap(
    federation: Deployment, tmp_path: Path
) -> None:
    server_data = tmp_path / "server.csv"  # the server's evaluation data, same classes
    server_data.write_text("text,label\n" + "".join(f"r {i},{['negative', 'positive'][i % 2]}\n"
                                                     for i in range(60)))  # fmt: skip
    cfg = tiny_config(
        federation.root / "byo", "data.num_clients=3", "run.rounds=1", "data.dataset='custom'",
        f"data.train_file={str(server_data)!r}", "data.label_names=['negative','positive']",
        "data.train_size=60",
    )  # fmt: skip
    run_id = _submit(federation, cfg, **{keys.RUN_CLIENT_WEIGHT: "reported",
                                         keys.RUN_MAX_EXAMPLES: 20})  # fmt: skip
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    stats = json.loads((root / "flower.json").read_text())
    own = stats["clients"]["2"]
    assert own["own_data"] is True and own["num_examples"] == 24  # every row of its file
    assert own["max_examples"] == 20  # … but it weighs at most the cap
    round1 = {c["client_id"]: c for c in _lines(root / "clients.jsonl")}
    assert all(c["status"] == "ok" for c in round1.values()), round1
    assert round1[2]["num_examples"] == 20  # its weight in the average: the cap
    assert round1[0]["num_examples"] == stats["clients"]["0"]["num_examples"] <= 20


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_FLOWER_SECAGG"),
    reason="a fresh ClientApp process per stage on node 2 (~6 min on 2 busy cores); "
    "set FEDPEFT_FLOWER_SECAGG=1",
)
def test_secure_aggregation_with_client_hosts_and_a_fresh_process_per_message(
    federation: Deployment, tmp_path: Path
) -> None:
    """The four SecAgg+ stages over the deployment: nodes 0 and 1 answer through their
    client hosts (the secrets travel in each request's header), node 2 in a fresh
    flwr-clientapp process per message (the secrets wait in its SuperNode's Context)."""
    server_data = tmp_path / "server.csv"
    server_data.write_text("text,label\n" + "".join(f"r {i},{['negative', 'positive'][i % 2]}\n"
                                                     for i in range(60)))  # fmt: skip
    cfg = tiny_config(
        federation.root / "secure", "data.num_clients=3", "run.rounds=1", "data.dataset='custom'",
        f"data.train_file={str(server_data)!r}", "data.label_names=['negative','positive']",
        "data.train_size=60", "privacy.secure_aggregation=true", "server.head_init='random'",
    )  # fmt: skip
    run_id = _submit(federation, cfg, **{keys.RUN_CLIENT_WEIGHT: "reported"})
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    (row,) = _lines(root / "metrics.jsonl")
    assert row["accepted"] == 3 and row["quorum"]
    assert row["secure_aggregation"]["survivors"] == 3
    assert all(c["status"] == "ok" for c in _lines(root / "clients.jsonl"))
    stats = json.loads((root / "flower.json").read_text())
    assert stats["clients"]["2"]["processes_seen"] == 4  # one per stage, none kept secrets


def _head(path: Path) -> dict[str, torch.Tensor]:
    """The task head's tensors in an exported adapter folder."""
    return {k: v for k, v in load_file(path / WEIGHTS).items() if ".classifier." in k}


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_FLOWER_PERSONAL"),
    reason="a personalised run over the deployment (170–250 s on 2 busy cores); "
    "set FEDPEFT_FLOWER_PERSONAL=1",
)
def test_personal_heads_stay_on_their_nodes_across_rounds(
    federation: Deployment, tmp_path: Path
) -> None:
    """``personalization.mode = 'head'`` over the deployment: no head tensor (nor the kept
    state) ever reaches the server; each node's head, kept in its SuperNode's Context state
    between a fresh ClientApp process per message, continues round 1 in round 2 — it equals
    the in-process run's — differs from the global and from the other node's, and each
    client's personal metrics arrive. Opt-in (``FEDPEFT_FLOWER_PERSONAL=1``): it took 170–250 s
    on this machine's 2 shared cores, a fresh flwr-clientapp process per message."""
    extra = ("personalization.mode='head'", "data.client_test_fraction=0.25")
    cfg = tiny_config(federation.root / "personal", *extra)
    run_id = _submit(federation, cfg)
    local = run_local(tiny_config(tmp_path, *extra))  # meanwhile, the same run in-process
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    assert all(c["status"] == "ok" for c in _lines(root / "clients.jsonl"))
    received = json.loads((root / "flower.json").read_text())["received"]
    allowed = {keys.ARRAYS, keys.META, keys.HELLO}
    train = {n for n in received[keys.TRAIN] if n.startswith(f"{keys.ARRAYS}/")}
    assert any(".lora_A." in n for n in train)  # the shared LoRA came back …
    for kind in (keys.TRAIN, keys.EVALUATE):  # … and nothing else: no head, no kept state
        assert {n.split("/")[0] for n in received[kind]} == allowed, received[kind]
        assert not [n for n in received[kind] if ".classifier." in n or keys.KEPT in n]
    rows = {r["client_id"]: r for r in _lines(root / "personal.jsonl")}
    theirs = {r["client_id"]: r for r in _lines(local.run_dir / "personal.jsonl")}
    assert sorted(rows) == [0, 1] and all(r["status"] == "ok" for r in rows.values())
    for cid, row in rows.items():
        assert row["round"] == 2 and set(row["models"]) == {"personal"}
        assert (
            row["models"]["personal"]["accuracy"] == theirs[cid]["models"]["personal"]["accuracy"]
        )
    glob = _head(root / "adapter")
    assert glob  # the global has a head (its initial one) for the personal ones to differ from
    heads = {}
    for cid in (0, 1):  # each node exported its personal model on its own disk, beside
        node = federation.node_dir(f"node{cid}")  # the snapshot of its kept state, nothing else
        files = [p for p in node.rglob("*") if p.is_file()]
        (folder,) = {p.parent.parent if p.parent.name == "adapter" else p.parent for p in files}
        assert folder.parts[-2:] == (root.name, str(cid))
        names = sorted(p.name for p in folder.iterdir())
        assert names[0] == "adapter" and names[2] == "kept.json" and len(names) == 3
        assert json.loads((folder / "kept.json").read_text())["round"] == 2
        adapter = folder / "adapter"
        heads[cid] = _head(adapter)
        mine = _head(local.run_dir / "clients" / str(cid) / "adapter")
        assert heads[cid].keys() == glob.keys() == mine.keys()
        for k, v in heads[cid].items():
            torch.testing.assert_close(v, mine[k], rtol=0, atol=1e-6)
            assert not torch.allclose(v, glob[k])
    assert all(not torch.allclose(heads[0][k], heads[1][k]) for k in glob)


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_FLOWER_PERSONAL"),
    reason="two personalised runs over the deployment and a node restart (~4-8 min on 2 "
    "busy cores); set FEDPEFT_FLOWER_PERSONAL=1",
)
def test_a_restarted_supernode_continues_its_personal_head_from_its_own_disk(
    federation: Deployment, tmp_path: Path
) -> None:
    """Two rounds of a ``head``-personalised run; then node 0 and its client host are killed
    (SIGKILL: the SuperNode's Context state, which held the head, is gone) and started
    again with the same key, and the run is resumed for a third round. Node 0 reads its
    client's round-2 head back from the snapshot on its own disk, so round 3 ends exactly
    as the uninterrupted three-round run in-process: the same personal accuracy and loss,
    the same exported head. (Had the node started its head afresh from the global, the
    head would differ: the in-process control in ``test_flower_kept`` shows a resume that
    lost the kept states ends elsewhere.)"""
    extra = ("personalization.mode='head'", "data.client_test_fraction=0.25")
    cfg = tiny_config(federation.root / "restart", *extra)
    run_id = _submit(federation, cfg)
    local = run_local(tiny_config(tmp_path, *extra, "run.rounds=3"))  # meanwhile, in-process
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    node0 = federation.node_dir("node0")
    (manifest,) = [p for p in node0.rglob("kept.json") if p.parent.parts[-2] == root.name]
    assert json.loads(manifest.read_text())["round"] == 2
    online = _online(federation)
    federation.kill("node0")
    federation.kill("node0-host")
    # flwr 1.42's SuperLink holds a node online until two heartbeats (30 s apart) are
    # missed, and refuses a second activation of its key until then: restart after that
    deadline = time.monotonic() + 150
    while _online(federation) == online and time.monotonic() < deadline:
        time.sleep(2.0)
    assert len(_online(federation)) == len(online) - 1
    federation.start_supernode("node0", 0, federation.root / "keys" / "node0")
    more = tiny_config(federation.root / "restart", *extra, "run.rounds=3")
    rid = _submit(federation, more, **{keys.RUN_RESUME: str(root)})
    assert federation.wait(rid, TIMEOUT_S) == "finished:completed"
    assert federation.alive("node0") and federation.alive("node0-host")
    three = [c for c in _lines(root / "clients.jsonl") if c["round"] == 3]
    assert sorted((c["client_id"], c["status"]) for c in three) == [(0, "ok"), (1, "ok")]
    ours = {r["client_id"]: r for r in _lines(root / "personal.jsonl") if r["round"] == 3}
    theirs = {r["client_id"]: r for r in _lines(local.run_dir / "personal.jsonl")}
    assert sorted(ours) == [0, 1]
    for cid, row in ours.items():
        mine, want = row["models"]["personal"], theirs[cid]["models"]["personal"]
        assert theirs[cid]["round"] == 3 and mine["accuracy"] == want["accuracy"]
        assert mine["loss"] == pytest.approx(want["loss"], abs=1e-5)
    kept = json.loads(manifest.read_text())
    assert kept["round"] == 3 and kept["rounds"][-1] == 3
    head = _head(manifest.parent / "adapter")
    expected = _head(local.run_dir / "clients" / "0" / "adapter")
    assert head.keys() == expected.keys() and head
    for k, v in head.items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-6)


def _online(d: Deployment) -> set[int]:
    """The ids of the SuperNodes the SuperLink lists as online."""
    listing = d.cli("supernode", "list", FEDERATION, "--format", "json")
    return {n["node-id"] for n in json.loads(listing.stdout)["nodes"] if n["status"] == "online"}


def test_an_unregistered_supernode_is_refused(federation: Deployment) -> None:
    key = federation.node_key("intruder", register=False)
    federation.start_supernode("intruder", 1, key, host=False)
    proc = federation.procs["intruder"]
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.returncode not in (None, 0)
    log = (federation.root / "logs" / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in log
    listing = federation.cli("supernode", "list", FEDERATION, "--format", "json")
    online = [n for n in json.loads(listing.stdout)["nodes"] if n["status"] == "online"]
    assert len(online) == 3


def _network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.skipif(_network_address() is None, reason="needs a non-loopback IPv4 address")
def test_the_control_plane_refuses_the_network_while_the_fleet_api_serves_it(
    tmp_path: Path,
) -> None:
    """A SuperLink listening on every interface (as across machines): from the network
    address, registering a key, listing or submitting runs is refused, while a SuperNode
    whose key was registered from loopback activates over that same address."""
    ip = _network_address()
    assert ip is not None
    d = Deployment(tmp_path, bind="0.0.0.0")
    try:
        d.start_superlink(addresses=(ip,))
        d.connect("remote", f"{ip}:{d.port}")
        key = d.node_key("outsider", register=False)
        for args in (
            ("supernode", "register", f"{key}.pub", "remote"),
            ("list", "remote"),
            ("run", str(project_app()), "remote"),
        ):
            done = d.cli(*args)
            said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", done.stdout + done.stderr).split())
            assert done.returncode != 0, args
            assert "[code: 9] The SuperLink accepts control and runtime requests only" in said
            assert "trusted addresses" in said, said
        assert d.cli("list", FEDERATION, "--format", "json").returncode == 0  # loopback: yes
        listing = d.cli("supernode", "list", FEDERATION, "--format", "json")
        assert json.loads(listing.stdout)["nodes"] == []  # the refused key was not registered
        # the Fleet API answers the network: a registered node connects over it
        private = d.node_key("member")
        name = "member"
        d._start(name, [d._bin("flower-supernode"), "--superlink", f"{ip}:{d.port}",
                        "--root-certificates", str(d.tls.ca_cert),  # type: ignore[union-attr]
                        "--auth-supernode-private-key", str(private),
                        "--node-config", "partition-id=0", "--port", str(free_port())])  # fmt: skip
        deadline = time.monotonic() + 120
        online: list[dict] = []
        while not online and time.monotonic() < deadline and d.alive(name):
            time.sleep(1.0)
            listing = d.cli("supernode", "list", FEDERATION, "--format", "json")
            online = [n for n in json.loads(listing.stdout)["nodes"] if n["status"] == "online"]
        assert len(online) == 1, (d.root / "logs" / f"{name}.log").read_text()[-2000:]
    finally:
        d.close()


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_FLOWER_FAULTS"),
    reason="waits out round timeouts (~3 min on 2 cores); set FEDPEFT_FLOWER_FAULTS=1",
)
def test_a_killed_supernode_leaves_the_round_to_the_others_and_the_server_resumes(
    federation: Deployment,
) -> None:
    cfg = tiny_config(federation.root / "b", "server.min_clients=1")
    run_id = _submit(federation, cfg, **{keys.RUN_ROUND_TIMEOUT: 25.0})
    deadline = time.monotonic() + TIMEOUT_S
    metrics = None
    while time.monotonic() < deadline:  # kill node 1 once round 2 is under way
        runs = list(Path(cfg.run.output_dir).glob("*/metrics.jsonl"))
        if runs and runs[0].read_text().strip():
            metrics = runs[0]
            break
        time.sleep(0.2)
    assert metrics is not None
    federation.kill("node1")
    federation.kill("node1-host")
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = metrics.parent
    round2 = [c for c in _lines(root / "clients.jsonl") if c["round"] == 2]
    assert {c["client_id"]: c["status"] for c in round2} == {0: "ok", 1: "failed"}
    assert "came from node" not in next(c["reason"] for c in round2 if c["client_id"] == 1)
    assert _lines(root / "metrics.jsonl")[1]["accepted"] == 1
    # a new ServerApp run resumes the run folder from its last checkpoint
    more = tiny_config(federation.root / "b", "server.min_clients=1", "run.rounds=3")
    rid = _submit(federation, more, **{keys.RUN_RESUME: str(root), keys.RUN_ROUND_TIMEOUT: 30.0})
    assert federation.wait(rid, TIMEOUT_S) == "finished:completed"
    assert [r["round"] for r in _lines(root / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((root / "summary.json").read_text())["resumed_from_round"] == 2


def _fake_federation(monkeypatch: pytest.MonkeyPatch, status: str, details: str, make: Path | None):
    """``run_deployed`` with no process started: flwr's CLI answers as it does for a run that
    ends ``status`` with ``details``, and the run makes the folder ``make`` (if any)."""
    import subprocess

    for name in ("start_superlink", "start_supernode", "close"):
        monkeypatch.setattr(Deployment, name, lambda *a, **k: None)
    monkeypatch.setattr(Deployment, "node_key", lambda self, name: self.root / name)

    def cli(self: Deployment, *args: str, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
        out = ""
        if args[0] == "run":
            if make is not None:
                make.mkdir(parents=True)
                (make / "config.toml").write_text("")
                rows = [{"round": 1}, {"round": 2}]
                (make / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            out = json.dumps({"run-id": 5})
        elif args[0] == "list":
            out = json.dumps({"runs": [{"status": status, "status-details": details}]})
        elif args[0] == "log":
            out = f"ERROR: ServerApp raised an exception\n{details}\n"
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(Deployment, "cli", cli)


def test_a_deployment_says_why_it_failed_shows_its_rounds_and_names_no_older_run_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reason a deployed run failed outlives the SuperLink (its status and the saved
    ServerApp log), and an earlier run in the same output folder is not reported as this one."""
    from fedpeft.runtime.flower.deploy import run_deployed

    out, work = tmp_path / "runs", tmp_path / "work"
    (out / "zzz-earlier").mkdir(parents=True)
    (out / "zzz-earlier" / "config.toml").write_text("")
    (work / "logs").mkdir(parents=True)
    why = "ServerApp failed with exception: only 0 of 2 clients answered within 300 s"
    _fake_federation(monkeypatch, "finished:failed", why, None)
    status, run_dir = run_deployed("", 2, work, output_dir=out)
    assert status == f"finished:failed ({why})" and run_dir is None
    assert why in (work / "logs" / "serverapp-5.log").read_text()
    _fake_federation(monkeypatch, "finished:completed", "", out / "default-1")
    rounds: list[dict] = []
    done = run_deployed("", 2, work, output_dir=out, on_round=rounds.append)
    assert done == ("finished:completed", out / "default-1")
    assert rounds == [{"round": 1}, {"round": 2}]  # progress, each round once


def test_the_loopback_script_refuses_a_client_count_other_than_its_nodes(tmp_path: Path) -> None:
    """``--set data.num_clients`` against ``--nodes``: one sentence before anything starts,
    not a first contact that waits its whole timeout for partitions no node serves."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "flower_deploy.py"
    done = subprocess.run(
        [sys.executable, str(script), "--nodes", "2", "--set", "data.num_clients=3",
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "set the count with --nodes only" in done.stderr
    assert not (tmp_path / "work" / "logs").exists()  # nothing was started
