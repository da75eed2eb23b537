"""The CPU attention kernel in half-precision training (issue 19): SDPA's flash kernel
against its math backend, alone and in a model's training step, on one thread.

1. The kernel alone: forward + backward (training) and forward (evaluation) of bf16
   attention, bidirectional (MiniLM's 12 heads of 32) and causal with grouped keys
   (SmolLM2's 9 query and 3 key heads of 64), ~1,024 tokens a batch, lengths 16-512.
2. A model's training step (``step_speed.steps``: client 0, batch 16) with
   ``fedpeft.models.dropout.MATH_UP_TO`` at 0 (always the flash kernel) and at its value,
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


def _kernel_s(backend: SDPBackend, shapes: tuple[int, ...], causal: bool, train: bool) -> float:
    b, h, hk, length, d = shapes
    q = torch.randn(b, h, length, d, dtype=torch.bfloat16)
    k, v = (torch.randn(b, hk, length, d, dtype=torch.bfloat16) for _ in range(2))
    mask = None if causal else torch.ones(b, 1, 1, length, dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(5):
        with sdpa_kernel(backend):
            if train:
                qq, kk, vv = (t.requires_grad_() for t in (q.detach(), k.detach(), v.detach()))
                out = F.scaled_dot_product_attention(
                    qq, kk, vv, attn_mask=mask, is_causal=causal, enable_gqa=True
                )
                out.float().sum().backward()
            else:
                with torch.inference_mode():
                    F.scaled_dot_product_attention(
                        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
                    )
    return (time.perf_counter() - start) / 5


def kernels(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for kind, h, hk, d, causal in (("bidirectional", 12, 12, 32, False),
                                   ("causal, grouped keys", 9, 3, 64, True)):  # fmt: skip
        for length in (16, 32, 64, 128, 192, 256, 512):
            for train in (True, False):
                shapes = (max(1, 1024 // length), h, hk, length, d)
                flash, math_ = [], []
                for _ in range(repeats):
                    flash.append(_kernel_s(SDPBackend.FLASH_ATTENTION, shapes, causal, train))
                    math_.append(_kernel_s(SDPBackend.MATH, shapes, causal, train))
                rows.append({
                    "attention": kind, "keys": length, "pass": "train" if train else "eval",
                    "flash_ms": 1e3 * statistics.median(flash),
                    "math_ms": 1e3 * statistics.median(math_),
                    "math_speedup": statistics.median(flash) / statistics.median(math_),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_steps(repeats: int, n: int) -> dict[str, Any]:
    out = {}
    chosen = attention.MATH_UP_TO
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
                attention.MATH_UP_TO = up_to
                rows[up_to].append(steps(task, n))
        attention.MATH_UP_TO = chosen
        out[name] = {
            "flash_step_s": statistics.median(rows[0]),
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
        "math_up_to": attention.MATH_UP_TO,
        "kernels": kernels(max(3, args.repeats // 2)),
        "steps": model_steps(args.repeats, args.steps),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
