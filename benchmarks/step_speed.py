"""One client's training steps and one evaluation pass, variant against variant, on one
thread in one process (so a busy machine slows every variant alike): float32 against
bf16 autocast, our CPU dropout against torch's, the frozen-prefix cache on and off for
LoRA on the top blocks, ``torch.compile``, and the frozen weights stored in bf16 or float32
(``run.frozen_bf16``). Variants are interleaved over ``--repeats``;
medians are reported with their ratio to the variant's reference (torch's dropout, the
cache off, else the first variant), and for the cache the blocks it skipped.

    PYTHONPATH=src .venv/bin/python benchmarks/step_speed.py --repeats 5
    PYTHONPATH=src .venv/bin/python benchmarks/step_speed.py --variants auto_frozen_f32,auto \
        --set "model.name='HuggingFaceTB/SmolLM2-135M-Instruct'" --set "model.task='classify'"
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import emit  # noqa: E402

from fedpeft.client import ClientData, train  # noqa: E402
from fedpeft.config import load_config  # noqa: E402
from fedpeft.server.evaluate import eval_order, predict_batches  # noqa: E402
from fedpeft.server.task import Task, build_task  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402

VARIANTS = {
    "fp32": ["run.autocast='off'"],
    "fp32_torch_dropout": ["run.autocast='off'", "run.fast_dropout=false"],
    "auto": [],  # bf16 where the CPU has it natively
    "auto_torch_dropout": ["run.fast_dropout=false"],
    "bf16": ["run.autocast='bf16'"],
    "top3_no_cache": ["peft.layers=[3,4,5]", "run.prefix_cache=false"],
    "top3_cache": ["peft.layers=[3,4,5]"],
    "head_no_cache": ["peft.method='head'", "run.prefix_cache=false"],
    "head_cache": ["peft.method='head'"],
    "compiled": ["run.compile=true"],
    "auto_frozen_f32": ["run.frozen_bf16=false"],  # the frozen base's weights kept float32
}


def steps(task: Task, n: int) -> float:
    """Seconds per step of ``n`` steps of client 0 (its own seeded batches)."""
    ins = TrainInstruction(1, 0, 1, n, 16, 3e-3, 0.0, 0.0, 0)
    data = ClientData(task.data.train, task.data.partitions[0])
    start = time.perf_counter()
    train(task.model, ins, data, task.device)
    return (time.perf_counter() - start) / n


def evaluation(task: Task, batches: int) -> float:
    """Seconds for the first ``batches`` evaluation batches (batch 128, length-sorted)."""
    order = eval_order(task.data.eval, 128)
    chosen = order[len(order) // 2 : len(order) // 2 + batches]
    start = time.perf_counter()
    predict_batches(task.model, task.data.eval, chosen, task.device)
    return time.perf_counter() - start


def _reference(name: str, names: list[str]) -> str:
    """What a variant is compared with: the cache off for the cache, torch's dropout for
    ours, else the first variant."""
    if name.startswith(("top3", "head")):
        return name.split("_")[0] + "_no_cache"
    if f"{name}_torch_dropout" in names:
        return f"{name}_torch_dropout"
    return names[0]


def _paired(ref: dict[str, list[float]], var: dict[str, list[float]]) -> float:
    return statistics.median(r / v for r, v in zip(ref["step"], var["step"], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-batches", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="overrides for every variant")
    ap.add_argument("--out", default=None, help="also write the result here (JSON)")
    args = ap.parse_args()
    names = args.variants.split(",")
    base = ["run.threads=1", *args.set]
    tasks = {n: build_task(load_config(overrides=[*base, *VARIANTS[n]])) for n in names}
    torch.set_num_threads(1)
    for task in tasks.values():  # warm-up (compilation happens here)
        steps(task, 2)
        evaluation(task, 1)
    rows: dict[str, dict[str, list[float]]] = {n: {"step": [], "eval": []} for n in names}
    for _ in range(args.repeats):
        for n, task in tasks.items():
            rows[n]["step"].append(steps(task, args.steps))
            rows[n]["eval"].append(evaluation(task, args.eval_batches))
        print(
            json.dumps({n: {k: v[-1] for k, v in r.items()} for n, r in rows.items()}), flush=True
        )
    out: dict[str, Any] = {
        "repeats": args.repeats,
        "sets": args.set,
        "load_avg": os.getloadavg(),
        "variants": {},
    }
    for n in names:
        med = {k: statistics.median(v) for k, v in rows[n].items()}
        base = _reference(n, names)
        ref_rows = rows.get(base, rows[names[0]])
        ref = {k: statistics.median(v) for k, v in ref_rows.items()}
        caches = [c for c in tasks[n].prefix_caches.values() if c is not None]
        out["variants"][n] = {
            "median_step_s": med["step"],
            "median_eval_s": med["eval"],
            "step_speedup_vs_" + base: ref["step"] / med["step"],
            "eval_speedup_vs_" + base: ref["eval"] / med["eval"],
            # the same, paired: the median of each repeat's ratio (the variants of one repeat
            # ran side by side, so a load change between repeats cancels)
            "paired_step_speedup_vs_" + base: _paired(ref_rows, rows[n]),
            "blocks_skipped": sum(c.hits * c.layer for c in caches),
            "examples_served_from_cache": sum(c.hits for c in caches),
        }
    emit(out, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
