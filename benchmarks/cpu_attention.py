"""Attention in half-precision training on a CPU (issue 19): SDPA on bf16 tensors (its
flash kernel), on the same tensors cast to float32 (flash), and SDPA's math backend, alone
and in a model's training step, on one thread.

1. The kernel alone: forward + backward (training) and forward (evaluation) of bf16
   attention, bidirectional (MiniLM's 12 heads of 32, a padding mask) and causal with
   grouped keys (SmolLM2's 9 query and 3 key heads of 64, a causal mask), ~1,024 tokens a
   batch, lengths 16-512.
2. A model's training step (``step_speed.steps``: client 0, batch 16) with
   ``fedpeft.models.dropout.FLOAT32_UP_TO`` at 0 (SDPA on bf16) and at its value,
   interleaved, paired medians. MiniLM is measured without attention dropout (with it, the
   fast-dropout path computes attention itself and the choice never arises).

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_attention.py --repeats 5 \\
        --out benchmarks/results/cpu_attention_YYYYMMDD.json
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
import torch.nn.functional as F  # noqa: E402
from common import emit  # noqa: E402
from step_speed import steps  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import fedpeft.models.dropout as attention  # noqa: E402
from fedpeft.config import load_config  # noqa: E402
from fedpeft.server.task import build_task  # noqa: E402

MODELS = {
    "smollm2_instruct": [
        "model.name='HuggingFaceTB/SmolLM2-135M-Instruct'", "data.dataset='sst2'",
        "model.task='instruct'", "data.train_size=160", "model.max_length=32",
    ],
    "minilm_no_attention_dropout": [],  # its attention dropout set to 0 below
}  # fmt: skip


def _kernel_s(way: str, shapes: tuple[int, ...], causal: bool, train: bool) -> float:
    b, h, hk, length, d = shapes
    q = torch.randn(b, h, length, d, dtype=torch.bfloat16)
    k, v = (torch.randn(b, hk, length, d, dtype=torch.bfloat16) for _ in range(2))
    if causal:
        mask = torch.ones(b, 1, length, length, dtype=torch.bool).tril()
    else:
        mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
    backend = SDPBackend.MATH if way == "math" else SDPBackend.FLASH_ATTENTION
    start = time.perf_counter()
    for _ in range(5):
        qq, kk, vv = (t.detach().requires_grad_(train) for t in (q, k, v))
        with sdpa_kernel(backend), torch.set_grad_enabled(train):
            if way == "float32":
                qq, kk, vv = qq.float(), kk.float(), vv.float()
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)
            out = out.to(torch.bfloat16)
            if train:
                out.float().sum().backward()
    return (time.perf_counter() - start) / 5


WAYS = ("bf16", "float32", "math")


def kernels(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for kind, h, hk, d, causal in (("bidirectional", 12, 12, 32, False),
                                   ("causal, grouped keys", 9, 3, 64, True)):  # fmt: skip
        for length in (16, 32, 64, 128, 192, 256, 384, 512):
            for train in (True, False):
                shapes = (max(1, 1024 // length), h, hk, length, d)
                times: dict[str, list[float]] = {w: [] for w in WAYS}
                for _ in range(repeats):
                    for w in WAYS:
                        times[w].append(_kernel_s(w, shapes, causal, train))
                med = {w: statistics.median(t) for w, t in times.items()}
                rows.append({
                    "attention": kind, "keys": length, "pass": "train" if train else "eval",
                    **{f"{w}_ms": 1e3 * m for w, m in med.items()},
                    **{f"{w}_speedup_vs_bf16": med["bf16"] / med[w] for w in WAYS[1:]},
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_steps(repeats: int, n: int) -> dict[str, Any]:
    out = {}
    chosen = attention.FLOAT32_UP_TO
    for name, sets in MODELS.items():
        task = build_task(load_config(overrides=["run.threads=1", *sets]))
        if name.startswith("minilm"):
            for m in task.model.modules():
                if m.__class__.__name__.endswith("SelfAttention"):
                    m.dropout.p = 0.0
        steps(task, 2)
        rows: dict[int, list[float]] = {0: [], chosen: []}
        for _ in range(repeats):
            for up_to in rows:
                attention.FLOAT32_UP_TO = up_to
                rows[up_to].append(steps(task, n))
        attention.FLOAT32_UP_TO = chosen
        out[name] = {
            "bf16_attention_step_s": statistics.median(rows[0]),
            "chosen_step_s": statistics.median(rows[chosen]),
            "paired_speedup": statistics.median(
                a / b for a, b in zip(rows[0], rows[chosen], strict=True)
            ),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {
        "load_avg": os.getloadavg(),
        "float32_up_to": attention.FLOAT32_UP_TO,
        "kernels": kernels(max(3, args.repeats // 2)),
        "steps": model_steps(args.repeats, args.steps),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
