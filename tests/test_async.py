"""Asynchronous federation: the simulated clock, and run_async on the tiny BERT."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from fedpeft.aggregation import fedavg
from fedpeft.compression import decode
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool, LocalGlobalModel, run_local
from fedpeft.server import Federation, Observer, RunStore, ServerState
from fedpeft.server.async_loop import Event, SimClock, run_async
from fedpeft.server.task import build_task
from fedpeft.types import RoundRecord

SPEED = {0: 1.0, 1: 3.0, 2: 3.0}  # client 0 is three times as fast as the others


def _duration(cid: int, version: int, metrics: dict, down: int, up: int) -> float:
    return SPEED.get(cid, 2.0) + 1e-9 * (down + up)


def test_clock_orders_by_finish_time_then_dispatch_order() -> None:
    clock = SimClock()
    for cid, d in [(4, 2.0), (1, 1.0), (3, 2.0), (0, 0.5)]:
        clock.schedule(cid, d)
    order = [clock.pop() for _ in range(4)]
    assert order == [Event(0.5, 3, 0), Event(1.0, 1, 1), Event(2.0, 0, 4), Event(2.0, 2, 3)]
    assert clock.now == 2.0 and len(clock) == 0
    clock.schedule(7, 1.5)  # scheduled from the current time
    assert clock.pop() == Event(3.5, 4, 7)
    with pytest.raises(FedpeftError, match="finite"):
        clock.schedule(1, float("nan"))


def test_fast_clients_finish_more_often_on_the_clock() -> None:
    clock, landed = SimClock(), Counter()
    for cid in SPEED:
        clock.schedule(cid, SPEED[cid])
    for _ in range(50):
        event = clock.pop()
        landed[event.client_id] += 1
        clock.schedule(event.client_id, SPEED[event.client_id])
    assert landed[0] > 2.5 * landed[1] and landed[1] == landed[2]


class _Spy:
    """The real in-process pool, keeping every reply it sends (and breaking one client's)."""

    def __init__(self, inner: LocalClientPool, broken: int | None = None) -> None:
        self.inner, self.broken, self.replies = inner, broken, []

    def num_examples(self, client_id: int) -> int | None:
        return self.inner.num_examples(client_id)

    def fit(self, instruction, payload: bytes) -> bytes:
        if instruction.client_id == self.broken:
            return b"not a safetensors payload"
        reply = self.inner.fit(instruction, payload)
        self.replies.append((instruction.client_id, reply))
        return reply


def _run(tiny, tmp_path: Path, *extra: str, broken: int | None = None, duration=_duration):
    cfg = tiny("data.num_clients=3", "server.mode='async'", *extra)
    task = build_task(cfg)
    state = ServerState({"global": {k: v.cpu() for k, v in get_adapter_state(task.model).items()}})
    store = RunStore.create(tmp_path / "runs", cfg.run.name, "", fingerprint="test")
    pool = _Spy(LocalClientPool(task), broken)
    fed = Federation(cfg, pool, LocalGlobalModel(task), store, durations=duration)
    result = run_async(fed, state)
    return result, store, pool, state


def test_async_run_records_sim_time_staleness_and_is_deterministic(tiny, tmp_path) -> None:
    extra = ("run.rounds=4", "server.buffer_size=2", "server.max_concurrency=2")
    result, store, _, start = _run(tiny, tmp_path, *extra)
    rounds = store.read_rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3, 4] == [r.round for r in result.records]
    times = [r["sim_clock_s"] for r in rounds]
    assert times == sorted(times) and times[0] > 0
    steps = [r["sim_time_s"] for r in rounds]  # each step's share of the clock
    assert steps == pytest.approx(
        [times[0], *(b - a for a, b in zip(times, times[1:], strict=False))]
    )
    assert all(r["accepted"] == 2 for r in rounds)
    clients = [json.loads(line) for line in (store.root / "clients.jsonl").read_text().splitlines()]
    assert len(clients) == 8 and {c["round"] for c in clients} == {1, 2, 3, 4}
    assert any(c["metrics"]["staleness"] > 0 for c in clients)
    landed = Counter(c["client_id"] for c in clients)
    assert landed[0] == max(landed.values())  # the fast client lands most often
    end = result.state.adapter
    assert any(not torch.equal(end[k], start.adapter[k]) for k in start.adapter)
    again, _, _, _ = _run(tiny, tmp_path, *extra)
    for key, value in end.items():
        torch.testing.assert_close(again.state.adapter[key], value, rtol=0, atol=0)
    assert store.load_checkpoint().round == 4


def test_first_step_of_fresh_clients_is_fedavg(tiny, tmp_path) -> None:
    """All clients start from θ⁰ (τ = 0) and η = 1: the first server step is their FedAvg."""
    result, _, pool, start = _run(
        tiny,
        tmp_path,
        "run.rounds=1",
        "server.buffer_size=3",
        "server.staleness_exponent=2.0",
        duration=lambda *_: 1.0,
    )
    updates = []
    for _, reply in pool.replies[:3]:  # equal durations: the first three sent land first
        state, meta = decode(reply)
        updates.append((state, float(meta["num_examples"])))
    assert sorted(cid for cid, _ in pool.replies[:3]) == [0, 1, 2]
    for key, value in fedavg(updates).items():
        torch.testing.assert_close(result.state.adapter[key], value, rtol=1e-5, atol=1e-6)


def test_bad_replies_are_recorded_and_the_run_goes_on(tiny, tmp_path) -> None:
    result, store, _, _ = _run(tiny, tmp_path, "run.rounds=2", "server.buffer_size=2", broken=1)
    clients = [json.loads(line) for line in (store.root / "clients.jsonl").read_text().splitlines()]
    bad = [c for c in clients if c["client_id"] == 1]
    assert bad and all(c["status"] == "rejected" for c in bad)
    assert len(result.records) == 2 and all(r.accepted == 2 for r in result.records)
    assert sum(r.rejected for r in result.records) == len(bad)


def test_async_refuses_rules_it_cannot_stand_in_for_and_a_dead_federation(tiny, tmp_path) -> None:
    with pytest.raises(FedpeftError, match="server.aggregator"):
        _run(tiny, tmp_path, "server.aggregator='krum'")
    cfg = tiny("data.num_clients=1", "server.mode='async'")
    task = build_task(cfg)
    state = ServerState({"global": {k: v.cpu() for k, v in get_adapter_state(task.model).items()}})
    store = RunStore.create(tmp_path / "dead", cfg.run.name, "", fingerprint="test")
    fed = Federation(
        cfg, _Spy(LocalClientPool(task), 0), LocalGlobalModel(task), store, durations=_duration
    )
    with pytest.raises(FedpeftError, match="failed or were rejected"):
        run_async(fed, state)


def test_async_settings_are_validated(tiny) -> None:
    for bad in ("server.mode='later'", "server.buffer_size=0", "server.staleness_exponent=-1"):
        with pytest.raises(FedpeftError):
            tiny(bad)
    cfg = tiny("server.mode='async'", "server.max_concurrency=2", "server.async_lr=0.5")
    assert (cfg.server.mode, cfg.server.max_concurrency, cfg.server.async_lr) == ("async", 2, 0.5)


def test_an_offline_device_is_recorded_as_offline_not_as_a_failure(tiny, tmp_path) -> None:
    """Simulated devices in async mode: a device that is never available lands as `offline`,
    is charged no download and never counts toward the failure abort."""
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(
        "[up]\nbase = 'high'\navailability = 1.0\n[down]\nbase = 'high'\navailability = 0.0\n"
    )
    cfg = tiny(
        "data.num_clients=3",
        "server.mode='async'",
        "simulation.devices=true",
        f"profiles.file={str(tiers)!r}",
        "profiles.mix=['up','up','down']",
        "run.rounds=6",
        "server.buffer_size=2",
    )
    result = run_local(cfg)
    clients = [
        json.loads(line) for line in (result.run_dir / "clients.jsonl").read_text().splitlines()
    ]
    down = [c for c in clients if c["client_id"] == 2]
    assert down and all(c["status"] == "offline" and c["bytes_down"] == 0 for c in down)
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5, 6]


class _StopAfter(Observer):
    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == self.rnd:
            raise KeyboardInterrupt


def test_async_resume_is_bitwise_equal_to_an_uninterrupted_run(tiny) -> None:
    """The clock, the generator and every client in flight are checkpointed."""
    cfg = tiny(
        "data.num_clients=3",
        "server.mode='async'",
        "run.rounds=5",
        "server.buffer_size=2",
        "server.max_concurrency=2",
    )
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter(2))
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    resumed = run_local(cfg, resume=stopped)
    for key, value in full.state.items():
        assert torch.equal(resumed.state[key], value), key
    # measured seconds, and the bytes of replies whose metadata holds measured seconds
    strip = ("wall_time_s", "eval_time_s", "client_time_s", "bytes_up", "reply_bytes_up")
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.rounds] == [
        {k: v for k, v in r.items() if k not in strip} for r in full.rounds
    ]
