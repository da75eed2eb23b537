"""Parallel clients over one base: forked workers, the thread plan, and independence of the
result from the number of workers."""

from __future__ import annotations

import io
import os
import platform
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from fedpeft.config import load_config
from fedpeft.errors import ClientSkipped
from fedpeft.runtime.local import LocalClientPool, ParallelClientPool, run_local
from fedpeft.runtime.local.simulator import client_pool
from fedpeft.runtime.local.threads import clients_per_round, plan_threads, usable_cores
from fedpeft.runtime.local.workers import (
    ForkedWorkers,
    WorkerDied,
    instruction_from_json,
    instruction_json,
    read_frame,
    write_frame,
)
from fedpeft.server.task import Task
from fedpeft.types import ClientStatus, TrainInstruction


def _ins(cid: int, **kw: object) -> TrainInstruction:
    return TrainInstruction(1, cid, 1, None, 16, 1e-3, 0.0, 0.0, 7, **kw)  # type: ignore[arg-type]


def test_frames_and_instructions_round_trip() -> None:
    ins = _ins(3, freeze=("lora_A",), method="lora", options='{"r": 4}', nonce="n")
    buf = io.BytesIO()
    write_frame(buf, instruction_json(ins), b"\x00payload")
    write_frame(buf, {"status": "ok"}, b"")
    buf.seek(0)
    meta, payload = read_frame(buf) or ({}, b"")
    assert instruction_from_json(meta) == ins and payload == b"\x00payload"
    assert read_frame(buf) == ({"status": "ok"}, b"")
    assert read_frame(buf) is None
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(b"\x00\x00\x00\x09\x00"))


def _echo(meta: dict[str, object], payload: bytes) -> bytes:
    """A worker's handler without a model: its pid and the reversed payload, or a failure."""
    ins = instruction_from_json(meta)
    if ins.client_id == 5:
        raise ClientSkipped(ClientStatus.OFFLINE, "not today")
    if ins.client_id == 6:
        raise ValueError("bad options")
    if ins.client_id == 7:
        os._exit(3)  # the worker dies mid-request
    return str(os.getpid()).encode() + b":" + payload[::-1]


def test_workers_answer_in_request_order_and_survive_failures() -> None:
    workers = ForkedWorkers(2, _echo)
    try:
        cids = (0, 1, 5, 6, 7, 2, 3)
        requests = [(instruction_json(_ins(c)), bytes([c]) * (c + 1)) for c in cids]
        replies = workers.run(requests, costs=[1, 2, 3, 4, 5, 6, 7])
        ok = [r for r in replies if isinstance(r, bytes)]
        assert [r.split(b":")[1] for r in ok] == [bytes([c]) * (c + 1) for c in (0, 1, 2, 3)]
        pids = {int(r.split(b":")[0]) for r in ok}
        assert os.getpid() not in pids and 1 <= len(pids) <= 3  # a replacement may answer
        skipped, failed, died = replies[2], replies[3], replies[4]
        assert isinstance(skipped, ClientSkipped) and skipped.status is ClientStatus.OFFLINE
        assert isinstance(failed, RuntimeError) and "ValueError: bad options" in str(failed)
        assert isinstance(died, WorkerDied) and "code 3" in str(died)
        again = workers.run(
            [(instruction_json(_ins(0)), b"ab")], costs=[1]
        )  # the pool replaced the dead worker
        assert isinstance(again[0], bytes) and again[0].endswith(b":ba")
        assert len(workers.pids) == 2
        for pid in workers.pids:  # both die between rounds (e.g. killed for memory)
            os.kill(pid, signal.SIGKILL)
        for pid in workers.pids:  # wait until each is dead (a zombie, not yet reaped)
            deadline = time.monotonic() + 60
            while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        late = workers.run([(instruction_json(_ins(c)), b"xy") for c in (0, 1, 2)], [1, 1, 1])
        assert all(isinstance(r, bytes) and r.endswith(b":yx") for r in late)
    finally:
        workers.close()
    assert workers.pids == []


def test_the_thread_plan(tiny) -> None:
    cores = usable_cores()
    cfg = tiny("data.num_clients=10", "server.fraction=0.3")
    assert clients_per_round(cfg) == 3
    plan = plan_threads(cfg, torch.device("cpu"))
    assert plan.workers == min(cores, 3) and plan.worker_threads == 1
    assert plan.server_threads == 1  # tiny sets run.threads=1
    assert (
        plan_threads(tiny("run.workers=8", "data.num_clients=4"), torch.device("cpu")).workers == 4
    )
    assert plan_threads(tiny("run.workers=2"), torch.device("cuda")).workers == 1
    assert (
        plan_threads(tiny("run.workers=2", "server.mode='async'"), torch.device("cpu")).workers == 1
    )
    assert "OMP_WAIT_POLICY" in plan.describe()


def test_import_sets_a_passive_openmp_wait_policy() -> None:
    import fedpeft

    # the test process imports fedpeft (conftest) before torch; a user's setting wins
    assert os.environ.get("OMP_WAIT_POLICY") in {"PASSIVE", fedpeft.omp_wait_policy()}
    assert fedpeft.omp_wait_policy() == os.environ["OMP_WAIT_POLICY"]


CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


@pytest.mark.parametrize("name", CACHES)
def test_import_caps_onednn_caches_unless_set(name: str) -> None:
    """A fresh interpreter: importing fedpeft caps the cache (bf16 autocast on a CPU grew it
    by every batch shape); a value the user set is kept."""
    code = f"import os, fedpeft; print(os.environ['{name}'])"
    env = {k: v for k, v in os.environ.items() if k != name}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "64", out.stderr
    env[name] = "7"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "7", out.stderr


# Heap bytes in use after bf16-autocast linear steps over 400 new batch shapes, less before
# them (glibc's mallinfo2): what the per-shape caches kept.
_GROWTH = """
import ctypes, torch
import fedpeft
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks"
                " fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def in_use():
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
torch.manual_seed(0)
layer = torch.nn.Linear(256, 256)
def step(n):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(n, 256)).float().sum().backward()
for n in range(1, 9):
    step(n)
before = in_use()
for n in range(9, 409):
    step(n)
print(in_use() - before)
"""


def _cache_growth(capacity: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in CACHES}
    env |= {name: capacity for name in CACHES} if capacity else {}
    out = subprocess.run([sys.executable, "-c", _GROWTH], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="counts the heap with glibc's mallinfo2",
)
def test_capped_onednn_caches_stop_bf16_memory_growing_with_batch_shapes() -> None:
    """The caps do what they are for: over 400 batch shapes, the memory that bf16 autocast
    leaves behind stays a small fraction of what the uncapped caches (1,024 each) keep."""
    uncapped = _cache_growth("1024")
    if uncapped < 50 * 2**20:
        pytest.skip(f"this CPU's bf16 matmuls keep no per-shape cache ({uncapped >> 20} MiB)")
    capped = _cache_growth(None)  # what importing fedpeft sets
    assert capped < uncapped / 4, (capped >> 20, uncapped >> 20)


def _run(tiny, workers: int, *extra: str):  # type: ignore[no-untyped-def]
    pools: list[LocalClientPool] = []

    def build(task: Task) -> LocalClientPool:
        pools.append(client_pool(task))
        return pools[-1]

    cfg = tiny(f"run.workers={workers}", f"run.name='w{workers}'", *extra)
    return run_local(cfg, pool=build), pools[0]


@pytest.mark.parametrize("method", ["peft.r=8", "peft.layers=[1]"])  # the 2nd: prefix cache
def test_two_workers_give_bitwise_the_run_of_one(tiny, method: str) -> None:
    """Dropout is on (tiny-bert: 0.1; LoRA: 0.05), so equality needs every client's seed to
    follow it into whichever worker trains it."""
    extra = ("data.num_clients=4", "run.rounds=2", method)
    one, seq_pool = _run(tiny, 1, *extra)
    two, par_pool = _run(tiny, 2, *extra)
    assert type(seq_pool) is LocalClientPool and isinstance(par_pool, ParallelClientPool)
    assert par_pool.workers.pids == []  # closed with the run
    assert one.state.keys() == two.state.keys()
    assert all(torch.equal(one.state[k], two.state[k]) for k in one.state)
    assert [r["train_loss"] for r in one.rounds] == [r["train_loss"] for r in two.rounds]
    assert [r["eval"] for r in one.rounds] == [r["eval"] for r in two.rounds]
    assert all(r["fit_time_s"] > 0 for r in two.rounds)


def test_compressed_replies_and_kept_residuals_through_the_workers(tiny) -> None:
    """8-bit replies with error feedback: each client's residual ``ef/…`` goes to its worker
    with the fit job and comes back with the reply; the server process stores it."""
    extra = ("data.num_clients=4", "run.rounds=2", "compression.bits_up=8")
    one, seq_pool = _run(tiny, 1, *extra)
    two, par_pool = _run(tiny, 2, *extra)
    assert isinstance(par_pool, ParallelClientPool)
    assert all(c["status"] == "ok" for c in _clients(two))
    assert all(torch.equal(one.state[k], two.state[k]) for k in one.state)
    for cid in range(4):
        a, b = (p.states.load(cid, 3) for p in (seq_pool, par_pool))
        assert a and all(k.startswith("ef/") for k in a)  # a residual, kept after round 2
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_pool_simulates_devices_like_the_sequential_one(tiny, tmp_path) -> None:
    from tests.test_hetero import _tiers

    tiers = _tiers(tmp_path, fast={}, slow={"flops_per_s": 1e3}, away={"availability": 0.0})
    mix = "profiles.mix=['fast','slow','away','fast','fast']"
    extra = (tiers, mix, "data.num_clients=5", "run.rounds=1", "simulation.devices=true")
    one, _ = _run(tiny, 1, *extra, "allocation.deadline_s=30")
    three, pool = _run(tiny, 3, *extra, "allocation.deadline_s=30")
    assert isinstance(pool, ParallelClientPool)
    rows = lambda r: [(c["client_id"], c["status"], c["sim_time_s"]) for c in _clients(r)]  # noqa: E731
    assert [s for _, s, _ in rows(three)] == ["ok", "straggler", "offline", "ok", "ok"]
    # simulated time counts the reply's bytes, whose metrics (timings) vary in length
    assert [r[:2] for r in rows(one)] == [r[:2] for r in rows(three)]
    times = lambda r: [t or 0.0 for _, _, t in rows(r)]  # noqa: E731  (offline: none)
    assert times(one) == pytest.approx(times(three), rel=1e-3)
    assert all(torch.equal(one.state[k], three.state[k]) for k in one.state)


def _clients(result) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    return [json.loads(x) for x in (result.run_dir / "clients.jsonl").read_text().splitlines()]


def test_workers_setting_is_not_part_of_the_fingerprint() -> None:
    from fedpeft.config import config_fingerprint

    a = load_config(overrides=["run.workers=1", "eval.every=1"])
    b = load_config(overrides=["run.workers=4", "eval.every=3"])
    assert config_fingerprint(a) == config_fingerprint(b)


def test_evaluation_shared_out_among_workers_gives_the_same_metrics(tiny) -> None:
    from fedpeft.peft import get_adapter_state
    from fedpeft.runtime.local import LocalGlobalModel
    from fedpeft.runtime.local.jobs import WorkerJobs
    from fedpeft.server.task import build_task

    task = build_task(tiny("eval.batch_size=8"))  # 48 examples: 6 batches
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in get_adapter_state(task.model).items()}
    alone = LocalGlobalModel(task).evaluate(state)
    workers = ForkedWorkers(3, WorkerJobs(task).handle)
    try:
        shared = LocalGlobalModel(task, workers).evaluate(state)
        assert len(workers.pids) == 3
    finally:
        workers.close()
    assert shared == alone


def test_split_shares_are_contiguous_balanced_and_complete() -> None:
    import numpy as np

    from fedpeft.server.evaluate import split_shares

    lengths = np.array([1] * 8 + [10] * 8)
    batches = [np.arange(i, i + 2) for i in range(0, 16, 2)]  # costs 2,2,2,2,20,20,20,20
    shares = split_shares(batches, lengths, 2)
    assert shares[0][0] == 0 and shares[-1][1] == len(batches)
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
    assert shares == [(0, 6), (6, 8)]  # 48 vs 40 of 88
    assert split_shares(batches[:1], lengths, 4) == [(0, 1)]


def test_auto_autocast_is_bf16_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpeft.server import precision

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "native_cpu_bf16", lambda native=native: native)
        assert precision.autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
        assert precision.autocast_dtype("off", cpu) is None
        assert precision.autocast_dtype("bf16", cpu) == torch.bfloat16
    assert isinstance(precision.native_cpu_bf16(), bool)  # the real probe answers


def test_a_bf16_run_trains_and_keeps_float32_state(tiny) -> None:
    """bf16 autocast (native or emulated): the forward passes change, the adapter state and
    the updates stay float32, and the run learns as the float32 run does on tiny data."""
    bf16 = run_local(tiny("run.autocast='bf16'", "run.name='bf16'"))
    fp32 = run_local(tiny("run.name='fp32'"))
    clients = (bf16.run_dir / "clients.jsonl").read_text().splitlines()
    assert all('"status": "ok"' in line for line in clients)
    assert all(v.dtype == torch.float32 for v in bf16.state.values())
    assert any(not torch.equal(bf16.state[k], fp32.state[k]) for k in fp32.state)
    assert abs(bf16.rounds[-1]["eval"]["accuracy"] - fp32.rounds[-1]["eval"]["accuracy"]) <= 0.25
