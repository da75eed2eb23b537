"""Greedy generation of a trained SmolLM2 LoRA in float32 against the run's bf16 autocast
(trained under it, on a CPU with native bf16): accuracy, seconds and the share of answers
that agree (one thread; each precision twice, alternated).

    PYTHONPATH=src .venv/bin/python benchmarks/generate_precision.py sst2 40
    PYTHONPATH=src .venv/bin/python benchmarks/generate_precision.py ag_news 40
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedpeft.client import ClientData, train  # noqa: E402
from fedpeft.config import load_config  # noqa: E402
from fedpeft.server.generate import generate_answers, parse_answer  # noqa: E402
from fedpeft.server.task import build_task  # noqa: E402
from fedpeft.types import TrainInstruction  # noqa: E402


def main(dataset: str, steps: int) -> None:
    torch.set_num_threads(1)
    cfg = load_config(
        overrides=[
            "model.name='HuggingFaceTB/SmolLM2-135M-Instruct'",
            f"data.dataset='{dataset}'",
            "data.train_size=320",
            "data.eval_size=300",
            "data.num_clients=1",
            "run.threads=1",
            "run.device='cpu'",
            "run.autocast='bf16'",  # emulated (slow) where the CPU has no native bf16
            "run.frozen_bf16=false",  # float32 weights, so the float32 arm is float32's
        ]
    )
    task = build_task(cfg)
    ins = TrainInstruction(1, 0, 1, steps, 16, cfg.client.fixed_lr, 0.0, 0.0, 0)
    start = time.perf_counter()
    train(task.model, ins, ClientData(task.data.train, task.data.partitions[0]), task.device)
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
    split, answers = task.data.eval, {}
    under_autocast = task.model.generate  # the run's (bf16 where the CPU has it natively)
    for name in ("float32", "bf16", "float32", "bf16"):
        # float32: the class's own generate, as before generation was wrapped in autocast
        task.model.generate = (
            under_autocast if name == "bf16" else type(task.model).generate.__get__(task.model)
        )
        start = time.perf_counter()
        texts = generate_answers(task.model, split, 32, task.device)
        preds = np.asarray([parse_answer(t, split.label_names) for t in texts])
        answers[name] = preds
        print(
            f"{name}: {time.perf_counter() - start:.1f} s, accuracy "
            f"{(preds == split.labels).mean():.4f}, invalid {(preds == -1).mean():.4f}",
            flush=True,
        )
    same = int((answers["float32"] == answers["bf16"]).sum())
    print(f"same predicted class: {same} / {len(split)}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "sst2", int(args[1]) if len(args) > 1 else 40)
