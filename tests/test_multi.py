"""The rules that need more than one list of updates, end to end in `fedpeft run`:
layer-wise (a server proxy set), clustered (one global per cluster), KD fusion (across
method groups) and the asynchronous mode (a simulated clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpeft.errors import FedpeftError
from fedpeft.runtime.local import run_local
from fedpeft.server import RunStore
from fedpeft.server.task import build_data


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_proxy_set_is_held_out_from_every_client(tiny) -> None:
    data = build_data(tiny("server.aggregator='layerwise'", "server.proxy_size=16"))
    held = set(data.proxy.tolist())
    assert len(held) == 16
    assert all(not held & set(p.tolist()) for p in data.partitions)
    assert sum(len(p) for p in data.partitions) == 64 - 16
    assert len(build_data(tiny()).proxy) == 0  # only rules that need one take examples


def test_layerwise_runs_and_differs_from_fedavg(tiny) -> None:
    sets = ("server.proxy_size=16", "data.num_clients=3", "data.partition='dirichlet'")
    lw = run_local(tiny("server.aggregator='layerwise'", *sets))
    avg = run_local(tiny("server.aggregator='fedavg'", *sets))
    assert all(r["accepted"] == 3 for r in lw.rounds)
    assert any(
        not (lw.state[k] == avg.state[k]).all() for k in lw.state
    )  # importance weights moved the average


def test_clustered_serves_each_client_its_clusters_global(tiny) -> None:
    cfg = tiny(
        "server.aggregator='clustered'",
        "data.num_clients=4",
        "data.partition='pathological'",
        "run.rounds=3",
    )
    result = run_local(cfg)
    clients = _lines(result.run_dir / "clients.jsonl")
    first = {c["group"] for c in clients if c["round"] == 1}
    later = {c["group"] for c in clients if c["round"] == 3}
    assert first == {"global"} and later <= {"cluster-0", "cluster-1"} and len(later) == 2
    assert set(RunStore(result.run_dir).load_checkpoint().clusters) == {0, 1, 2, 3}
    assert set(result.rounds[-1]["groups"]) == {"cluster-0", "cluster-1"}


def test_kd_fusion_distils_across_method_groups(tiny, tmp_path: Path) -> None:
    tiers = tmp_path / "t.toml"
    tiers.write_text("[a]\nbase = 'high'\n[b]\nbase = 'high'\n")
    sets = (
        f"profiles.file={str(tiers)!r}",
        "profiles.mix=['a','b','a','b']",
        "data.num_clients=4",
        "allocation.enabled=true",
        "allocation.policy='tiered'",
        "allocation.tiers={a={method='lora',options={r=4,alpha=8}},b={method='ia3',options={}}}",
        "server.proxy_size=16",
    )
    fused = run_local(tiny("server.aggregator='kd_fusion'", *sets))
    plain = run_local(tiny("server.aggregator='fedavg'", *sets))
    assert set(fused.rounds[-1]["groups"]) == {"lora", "ia3"}
    assert fused.rounds[-1]["groups"] != plain.rounds[-1]["groups"]  # distillation moved them


def test_clustered_and_layerwise_refuse_mixed_configurations(tiny) -> None:
    with pytest.raises(FedpeftError, match="allocation.enabled"):
        run_local(tiny("server.aggregator='clustered'", "allocation.enabled=true"))


def test_async_mode_runs_on_the_simulated_clock(tiny) -> None:
    cfg = tiny(
        "server.mode='async'",
        "data.num_clients=3",
        "server.buffer_size=2",
        "run.rounds=3",
        "profiles.mix=['high','mid','low']",
    )
    result = run_local(cfg)
    clock = [r["sim_clock_s"] for r in result.rounds]
    assert len(clock) == 3 and clock == sorted(clock) and clock[0] > 0
    clients = _lines(result.run_dir / "clients.jsonl")
    assert all("staleness" in c["metrics"] for c in clients)
    assert (result.run_dir / "adapter").is_dir()
