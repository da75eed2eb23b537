"""Round-0 head initialisation in allocated runs: the groups do not exist before round 1,
so round 0 assigns every client, creates each group's global as a round would and sets
its head from its own clients' statistics (every LoRA client shares the envelope's one
head; another method group has its own). A client the policy leaves out is not asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedpeft.aggregation.head_init import head_keys, lda_head, sum_stats
from fedpeft.client import ClientData
from fedpeft.client.features import class_feature_stats
from fedpeft.compression import decode
from fedpeft.config import ExperimentConfig
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import run_local
from fedpeft.runtime.local.simulator import LocalClientPool, LocalGlobalModel
from fedpeft.server.head_init import HeadInit, init_head
from fedpeft.server.state import ServerState
from fedpeft.server.task import Task, build_task
from fedpeft.types import AdapterState
from tests.conftest import tiny_config

# model-relative tiers (tiny-bert's 2 blocks: mid and low hold the top block only), every
# device always available so that who answers depends on the policy alone
TIERS = [
    "data.dataset='ag_news'",
    "data.num_clients=4",
    "profiles.scale='model'",
    "profiles.mix=['high','mid','low','high']",
    "profiles.relative={high={depth=1.0,compute=0.2,transfer=0.015},"
    "mid={depth=0.5,compute=0.4,transfer=0.06},low={depth=0.2,compute=0.8,transfer=0.3}}",
    "simulation.devices=true",
    "allocation.enabled=true",
    "allocation.deadline_s=60",
]
POLICIES = {
    "utility": [],
    "uniform_fit": [],
    "uniform_large": [],
    "tiered": [
        "allocation.tiers={high={method='lora',options={r=4,alpha=8}},"
        "mid={method='lora',options={r=2,alpha=4,layers=[1]}},"
        "low={method='lora',options={r=2,alpha=4,layers=[1]}}}"
    ],
    "hetlora": ["server.aggregator='hetlora'"],
    "flexlora": ["server.aggregator='exact_lora_svd'"],
    "fedra": [],
    "unconstrained": [],
}


class _Recording(LocalClientPool):
    """Remembers the configuration each client was asked with at round 0 and the view
    each was served at round 1."""

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.asked: dict[int, tuple[str, str]] = {}
        self.served: dict[int, AdapterState] = {}

    def fit(self, instruction, payload):  # type: ignore[no-untyped-def]
        if instruction.round == 0:
            self.asked[instruction.client_id] = (instruction.method, instruction.options)
        if instruction.round == 1:
            self.served[instruction.client_id] = decode(payload)[0]
        return super().fit(instruction, payload)


def _round_zero(cfg: ExperimentConfig) -> tuple[Task, _Recording, ServerState, HeadInit | None]:
    task = build_task(cfg)
    pool = _Recording(task)
    server, info = init_head(cfg, pool, LocalGlobalModel(task), ServerState({}), arch=task.arch)
    return task, pool, server, info


def _want_head(task: Task, asked: dict[int, tuple[str, str]], clients: list[int]) -> AdapterState:
    """The LDA head of the listed clients' summed statistics, each computed on the model of
    the configuration the client was asked with."""
    fresh = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}
    stats = [
        class_feature_stats(
            task.model_for(*asked[c]),
            ClientData(task.data.train, task.data.partitions[c]),
            4,
            64,
            task.device,
        )
        for c in clients
    ]
    return lda_head(fresh, sum_stats(stats))


def _assert_head(state: AdapterState, want: AdapterState) -> None:
    for got_key, want_key in zip(head_keys(state), head_keys(want), strict=True):
        assert got_key is not None and want_key is not None
        torch.testing.assert_close(state[got_key], want[want_key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_starts_the_envelopes_head_from_its_clients(
    tmp_path: Path, policy: str
) -> None:
    cfg = tiny_config(tmp_path, *TIERS, f"allocation.policy='{policy}'", *POLICIES[policy])
    task, pool, server, info = _round_zero(cfg)
    assert info is not None and info.rule == "lda" and not info.rejected
    assert set(server.adapters) == {"lora"} and server.main == "lora"
    asked = sorted(set(range(4)) - {int(c) for c in info.not_asked})
    assert info.groups["lora"]["clients"] == asked and info.clients == len(asked)
    if policy in ("uniform_large", "hetlora", "flexlora"):  # all blocks: mid and low left out
        assert asked == [0, 3]
    else:
        assert asked == [0, 1, 2, 3]
    _assert_head(server.adapters["lora"], _want_head(task, pool.asked, asked))
    assert server.members["lora"]  # the configurations that served it evaluate it
    assert "accuracy" in info.eval_after and info.eval_after == info.groups["lora"]["eval_after"]
    assert server.last_accuracy == {"lora": info.eval_after["accuracy"]}


def test_each_method_group_gets_the_head_of_its_own_clients(tmp_path: Path) -> None:
    tiers = (
        "allocation.tiers={high={method='bitfit',options={}},"
        "mid={method='lora',options={r=2,alpha=4,layers=[1]}},"
        "low={method='lora',options={r=2,alpha=4,layers=[1]}}}"
    )
    cfg = tiny_config(tmp_path, *TIERS, "allocation.policy='tiered'", tiers)
    task, pool, server, info = _round_zero(cfg)
    assert info is not None and set(server.adapters) == {"lora", "bitfit"}
    groups = {"lora": [1, 2], "bitfit": [0, 3]}
    for group, clients in groups.items():
        assert info.groups[group]["clients"] == clients
        _assert_head(server.adapters[group], _want_head(task, pool.asked, clients))
    held = {g: sum(len(task.data.partitions[c]) for c in cs) for g, cs in groups.items()}
    assert server.main == max(sorted(held), key=lambda g: held[g])  # the most examples


def test_an_allocated_run_starts_from_the_head_and_logs_it(tmp_path: Path) -> None:
    # (no bias refresh after the round: its statistics requests would be asked too)
    cfg = tiny_config(
        tmp_path,
        *TIERS,
        "allocation.policy='utility'",
        "run.rounds=1",
        "server.bias_refresh='none'",
    )
    pools: list[_Recording] = []

    def recording(task: Task) -> _Recording:
        pools.append(_Recording(task))
        return pools[-1]

    result = run_local(cfg, pool=recording)
    saved = json.loads((result.run_dir / "head_init.json").read_text())
    assert saved["clients"] == 4 and saved["groups"]["lora"]["clients"] == [0, 1, 2, 3]
    assert saved["bytes_down"] > 0 and saved["bytes_up"] > 0 and not saved["not_asked"]
    assert "accuracy" in saved["eval_after"] and len(result.rounds) == 1
    # round 1 served every client, whatever its configuration, the head round 0 set
    (pool,) = pools
    want = _want_head(build_task(cfg), pool.asked, [0, 1, 2, 3])  # the run's models trained
    assert sorted(pool.served) == [0, 1, 2, 3]
    assert len({json.dumps(sorted(s)) for s in pool.served.values()}) > 1  # configurations
    for state in pool.served.values():
        _assert_head(state, want)


def test_head_refresh_in_an_allocated_run_uses_every_clients_trained_view(
    tmp_path: Path,
) -> None:
    from fedpeft.client.handler import KIND_FEATURE_STATS

    cfg = tiny_config(
        tmp_path,
        *TIERS,
        "allocation.policy='utility'",
        "run.rounds=1",
        "server.head_refresh='last'",
    )
    replies: dict[int, AdapterState] = {}
    served: dict[int, AdapterState] = {}

    class Refreshing(LocalClientPool):
        def fit(self, instruction, payload):  # type: ignore[no-untyped-def]
            reply = super().fit(instruction, payload)
            if instruction.round == 1 and instruction.kind == KIND_FEATURE_STATS:
                replies[instruction.client_id] = decode(reply)[0]
                served[instruction.client_id] = decode(payload)[0]
            return reply

    result = run_local(cfg, pool=Refreshing)
    (record,) = result.rounds
    assert record["head_refresh"]["clients"] == 4 and sorted(replies) == [0, 1, 2, 3]
    # each client was served the round's trained LoRA (the refresh changes only the head):
    # every served factor of the envelope's full shape is the final one — A bit for bit, B
    # up to its configuration's alpha/r scale
    compared = 0
    for view in served.values():
        for key, value in view.items():
            final = result.state.get(key)
            if "lora_" not in key or final is None or value.shape != final.shape:
                continue
            if "lora_A" in key:
                assert torch.equal(value, final), key
            else:
                scale = float(final.norm() / value.norm())
                torch.testing.assert_close(value * scale, final, rtol=1e-4, atol=1e-7)
            compared += 1
    assert compared > 0
    want = lda_head(result.state, sum_stats(list(replies.values())))
    _assert_head(result.state, want)
