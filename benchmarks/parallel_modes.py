"""Threads or forked workers for parallel clients over ONE base? Measured side by side.

The same clients (MiniLM-L6 + LoRA r=8, SST-2, ``--steps`` local steps each) trained four
ways in one process, interleaved ``--repeats`` times:

- ``seq1``: one client after another, one intra-op thread (the old default);
- ``seq2``: one client after another, two intra-op threads;
- ``threads``: two Python threads, one intra-op thread each, each its own PEFT replica
  over the shared base (``peft.share.apply_shared``);
- ``fork``: the runtime's two forked workers (``ForkedWorkers``, started once and kept),
  one intra-op thread each, the base shared copy-on-write.

Reports the median wall time per mode and its ratio to ``seq1``, plus CPU seconds per
sample (this process and its children), which does not depend on how many cores other
jobs leave free. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads unless already set.

    PYTHONPATH=src .venv/bin/python benchmarks/parallel_modes.py --clients 4 --steps 6
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
import torch  # noqa: E402

from fedpeft.client import ClientData, train  # noqa: E402
from fedpeft.config import load_config  # noqa: E402
from fedpeft.peft.share import apply_shared  # noqa: E402
from fedpeft.runtime.local.workers import ForkedWorkers  # noqa: E402
from fedpeft.server.task import Task, build_task  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402


def instruction(cid: int, steps: int) -> TrainInstruction:
    return TrainInstruction(1, cid, 1, steps, 16, 3e-3, 0.0, 0.0, 0)


def train_one(task: Task, model: torch.nn.Module, cid: int, steps: int) -> None:
    data = ClientData(task.data.train, task.data.partitions[cid])
    train(model, instruction(cid, steps), data, task.device)


def seq(task: Task, models: list[torch.nn.Module], cids: list[int], steps: int, t: int) -> None:
    torch.set_num_threads(t)
    for cid in cids:
        train_one(task, models[0], cid, steps)
    torch.set_num_threads(1)


def threads(task: Task, models: list[torch.nn.Module], cids: list[int], steps: int) -> None:
    def work(k: int) -> None:
        for cid in cids[k :: len(models)]:
            train_one(task, models[k], cid, steps)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(len(models))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def fork(workers: ForkedWorkers, cids: list[int], steps: int) -> None:
    replies = workers.run([({"cid": c, "steps": steps}, b"") for c in cids], [1.0] * len(cids))
    bad = [r for r in replies if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"a forked worker failed: {bad[0]}")


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of this process and of the given (living) worker processes."""
    total = 0.0
    for pid in [os.getpid(), *pids]:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="seq1,seq2,threads,fork")
    args = ap.parse_args()
    cfg = load_config(overrides=["run.threads=1"])
    task = build_task(cfg)
    models = [task.model, apply_shared(task.base, task.method, task.arch, cfg.run.seed)]
    cids = list(range(args.clients))

    def handle(meta: dict[str, Any], _: bytes) -> bytes:
        train_one(task, task.model, int(meta["cid"]), int(meta["steps"]))
        return b"ok"

    workers = ForkedWorkers(2, handle)
    run: dict[str, Any] = {
        "seq1": lambda: seq(task, models, cids, args.steps, 1),
        "seq2": lambda: seq(task, models, cids, args.steps, 2),
        "threads": lambda: threads(task, models, cids, args.steps),
        "fork": lambda: fork(workers, cids, args.steps),
    }
    modes = args.modes.split(",")
    seq(task, models, cids[:1], 2, 1)  # warm-up
    fork(workers, cids[:2], 1)  # the workers start once, as in a run
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for m in modes:
            load = os.getloadavg()[0]
            c0, t0 = cpu_seconds(workers.pids), time.perf_counter()
            run[m]()
            wall[m].append(time.perf_counter() - t0)
            cpu[m].append(cpu_seconds(workers.pids) - c0)
            print(json.dumps({"mode": m, "wall_s": wall[m][-1], "cpu_s": cpu[m][-1],
                              "load1": load}), flush=True)  # fmt: skip
    samples = args.clients * args.steps * 16
    base = statistics.median(wall["seq1"]) if "seq1" in wall else None
    out = {
        m: {
            "median_wall_s": statistics.median(wall[m]),
            "speedup_vs_seq1": base / statistics.median(wall[m]) if base else None,
            "cpu_ms_per_sample": 1e3 * statistics.median(cpu[m]) / samples,
        }
        for m in modes
    }
    workers.close()
    print(json.dumps({"args": vars(args), "load_after": os.getloadavg(), "modes": out}, indent=2))


if __name__ == "__main__":
    main()
