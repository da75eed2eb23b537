"""Grouped LoRA (K clients in one pass over the base) against training them one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedpeft.client import ClientData, train
from fedpeft.compression import decode, encode
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.runtime.local.group_fit import GroupedClientPool
from fedpeft.runtime.local.grouped import local_batches
from fedpeft.server.task import Task, build_task
from fedpeft.types import TrainInstruction

SKEWED = ("data.num_clients=4", "data.partition='dirichlet'", "data.alpha=0.5")


def _ins(cid: int, **kw: object) -> TrainInstruction:
    fields: dict[str, object] = dict(round=3, client_id=cid, epochs=1, steps=None,
                                     batch_size=8, lr=5e-3, weight_decay=0.01,
                                     proximal_mu=0.0, seed=11)  # fmt: skip
    return TrainInstruction(**(fields | kw | {"nonce": f"n{cid}"}))  # type: ignore[arg-type]


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


class _Recording:
    """A split that records the batches it hands out."""

    def __init__(self, split) -> None:  # type: ignore[no-untyped-def]
        self.split, self.seen = split, []

    def train_batches(self, *args):  # type: ignore[no-untyped-def]
        for batch in self.split.train_batches(*args):
            self.seen.append(batch.input_ids)
            yield batch


@pytest.mark.parametrize("kw", [{}, {"epochs": 2}, {"steps": 5}])
def test_local_batches_are_the_batches_train_uses(tiny, kw: dict[str, object]) -> None:
    task = build_task(tiny())
    ins, idx = _ins(1, **kw), task.data.partitions[1]
    recording = _Recording(task.data.train)
    train(task.model, ins, ClientData(recording, idx), torch.device("cpu"))  # type: ignore[arg-type]
    ours = [b.input_ids for b in local_batches(ins, ClientData(task.data.train, idx))]
    assert len(ours) == len(recording.seen) > 0
    assert all(torch.equal(a, b) for a, b in zip(ours, recording.seen, strict=True))


def _requests(task: Task, **kw: object) -> list[tuple[TrainInstruction, bytes]]:
    g = torch.Generator().manual_seed(0)
    start = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in
             get_adapter_state(task.model).items()}  # fmt: skip
    return [(_ins(c, **kw), encode(start)) for c in range(task.cfg.data.num_clients)]


@pytest.mark.parametrize(
    "kw", [{}, {"proximal_mu": 0.5}, {"freeze": ("lora_A",)}, {"steps": 3, "epochs": 1}]
)
def test_grouped_training_matches_clients_one_by_one(tiny, kw: dict[str, object]) -> None:
    task = build_task(tiny(*SKEWED))
    sizes = {len(p) for p in task.data.partitions}
    assert len(sizes) > 1  # clients take different numbers of steps: some finish early
    requests = _requests(task, **kw)
    _no_dropout(task.model)
    alone = [LocalClientPool(task).fit(ins, payload) for ins, payload in requests]
    pool = GroupedClientPool(task, per_pass=4)
    grouped = pool.grouped("", "{}")
    assert grouped is not None
    _no_dropout(grouped.model)
    together = pool.fit_many(requests)
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, bytes)
        (sa, ma), (sb, mb) = decode(a), decode(b)
        assert ma["client_id"] == mb["client_id"] and ma["nonce"] == mb["nonce"]
        assert ma["num_examples"] == mb["num_examples"]
        assert ma["metrics"]["steps"] == mb["metrics"]["steps"]  # type: ignore[index]
        assert ma["metrics"]["loss"] == pytest.approx(mb["metrics"]["loss"], rel=1e-4)  # type: ignore[index]
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=2e-6)
    if "freeze" in kw:
        start, _ = decode(requests[0][1])
        assert all(torch.equal(decode(b)[0][k], start[k]) for b in together for k in start  # type: ignore[arg-type]
                   if "lora_A" in k)  # fmt: skip


def test_methods_that_cannot_be_grouped_train_one_by_one(tiny) -> None:
    task = build_task(tiny("peft.method='ia3'", "data.num_clients=3"))
    requests = _requests(task)
    pool = GroupedClientPool(task, per_pass=3)
    assert pool.grouped("", "{}") is None
    alone = [LocalClientPool(task).fit(ins, payload) for ins, payload in requests]
    together = pool.fit_many(requests)
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, bytes)
        sa, sb = decode(a)[0], decode(b)[0]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_clients_with_compressed_replies_train_one_by_one(tiny) -> None:
    """A compressed reply (and the residual it keeps) is ``handle_fit``'s: no grouping."""
    from fedpeft.compression import CompressionScheme

    task = build_task(tiny("data.num_clients=3"))
    scheme = CompressionScheme(bits=8, rounding="nearest").to_json()
    requests = _requests(task, compression=scheme)
    alone = [LocalClientPool(task).fit(ins, payload) for ins, payload in requests]
    together = GroupedClientPool(task, per_pass=3).fit_many(requests)
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, bytes)
        sa, sb = decode(a)[0], decode(b)[0]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_with_clients_trained_together_is_reproducible(tiny) -> None:
    sets = (*SKEWED, "run.clients_per_pass=4", "run.rounds=2")
    first, again = run_local(tiny(*sets)), run_local(tiny(*sets, "run.name='again'"))
    initial = get_adapter_state(build_task(tiny(*sets)).model)
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    assert any(not torch.equal(first.state[k], initial[k]) for k in initial)
    assert [r["accepted"] for r in first.rounds] == [4, 4]
    assert np.isfinite([r["train_loss"] for r in first.rounds]).all()


def test_gpu_script_runs_its_cpu_fallback(tmp_path) -> None:
    """``benchmarks/gpu.sh`` without CUDA: grouped LoRA checked against one-by-one training
    on the tiny BERT, and timed, by the same script a lent GPU runs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: gpu.sh would run the full GPU checks")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh")], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert result["device"] == "cpu" and all(e["ok"] for e in result["equivalence"])
    assert [r["per_pass"] for r in result["speed"]] == [1, 4]
    assert all(r["updates_per_s"] > 0 for r in result["speed"])
    llama = json.loads((tmp_path / "gpu_check_cpu_llama.json").read_text())
    assert all(e["ok"] for e in llama["equivalence"]) and llama["speed"][0]["per_pass"] == 4
    mfu = json.loads((tmp_path / "gpu_mfu_cpu.json").read_text())
    assert mfu["frozen_matmul_params"] == 2 * (4 * 64 * 64 + 3 * 64 * 128) + 64 * 128
    assert 0 < mfu["mfu"] < 1
    # the chunked loss and the merged LoRA matmul: loss and gradients equal peft's own step
    fast = json.loads((tmp_path / "gpu_mfu_cpu_chunked_merged.json").read_text())
    assert fast["chunked_loss"] == 16 and fast["merged_lora"] and fast["error_vs_peft"] < 1e-3
