"""A real loopback deployment: SuperLink + SuperNodes with TLS and SuperNode authentication.

One federation serves the module (starting it costs seconds): two registered SuperNodes,
each with its own partition and client host, run fedpeft through ``flwr run``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedpeft.config import ExperimentConfig, config_to_toml  # noqa: E402
from fedpeft.runtime.flower import keys  # noqa: E402
from fedpeft.runtime.flower.deploy import Deployment, write_app  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

TIMEOUT_S = 400.0


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = Deployment(tmp_path_factory.mktemp("flower"))
    try:
        d.start_superlink()
        for i in range(2):
            d.start_supernode(f"node{i}", i, d.node_key(f"node{i}"))
        yield d
    finally:
        d.close()


def _submit(d: Deployment, cfg: ExperimentConfig, name: str, **run_config: object) -> int:
    config = {
        keys.RUN_CONFIG_TOML: config_to_toml(cfg),
        keys.RUN_RESUME: "",
        keys.RUN_ROUND_TIMEOUT: 120.0,
        keys.RUN_CONNECT_TIMEOUT: 200.0,
        **run_config,
    }
    return d.submit(write_app(d.root / name, config))  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _run_dir(cfg: ExperimentConfig) -> Path:
    (run,) = Path(cfg.run.output_dir).iterdir()
    return run


def test_two_supernodes_with_tls_and_auth_run_two_rounds(federation: Deployment) -> None:
    cfg = tiny_config(federation.root / "a")
    run_id = _submit(federation, cfg, "app-a")
    assert federation.wait(run_id, TIMEOUT_S) == "finished:completed"
    root = _run_dir(cfg)
    rounds, clients = _lines(root / "metrics.jsonl"), _lines(root / "clients.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["accepted"] == 2 for r in rounds)
    assert len(clients) == 4 and all(c["status"] == "ok" for c in clients)
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    stats = json.loads((root / "flower.json").read_text())
    assert sum(c["num_examples"] for c in stats["clients"].values()) == 64
    assert stats["wire_bytes_up"] > stats["fedpeft_bytes_up"] > 0
    # a fresh flwr-clientapp process per message, yet one client host (one model load) each
    for c in stats["clients"].values():
        assert c["processes_seen"] == 1 and c["model_loads_in_last_process"] == 1


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
    listing = federation.cli("supernode", "list", "fedpeft", "--format", "json")
    online = [n for n in json.loads(listing.stdout)["nodes"] if n["status"] == "online"]
    assert len(online) == 2


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_FLOWER_FAULTS"),
    reason="waits out round timeouts (~3 min on 2 cores); set FEDPEFT_FLOWER_FAULTS=1",
)
def test_a_killed_supernode_leaves_the_round_to_the_others_and_the_server_resumes(
    federation: Deployment,
) -> None:
    cfg = tiny_config(federation.root / "b", "server.min_clients=1")
    run_id = _submit(federation, cfg, "app-b", **{keys.RUN_ROUND_TIMEOUT: 25.0})
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
    assert _lines(root / "metrics.jsonl")[1]["accepted"] == 1
    # a new ServerApp run resumes the run folder from its last checkpoint
    more = tiny_config(federation.root / "b", "server.min_clients=1", "run.rounds=3")
    rid = _submit(
        federation, more, "app-c", **{keys.RUN_RESUME: str(root), keys.RUN_ROUND_TIMEOUT: 30.0}
    )
    assert federation.wait(rid, TIMEOUT_S) == "finished:completed"
    assert [r["round"] for r in _lines(root / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((root / "summary.json").read_text())["resumed_from_round"] == 2
