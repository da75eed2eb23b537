"""LoRA step MFU on a 7B-shaped LLaMA (random weights, bf16) against the GPU's measured
bf16 matmul peak — issue 19's GPU target is an MFU of at least 45 %.

- **Peak**: the fastest of ``--peak-repeats`` timed ``n×n @ n×n`` bf16 matmuls, ``2n³``
  FLOPs each (what this GPU really does, not its datasheet).
- **Step**: forward, backward and AdamW of a LoRA model (``peft``, rank ``--rank`` on every
  linear projection of the blocks) over a frozen LLaMA with the 7B shape (d = 4096, 32
  blocks, 32 heads, MLP 11,008, vocabulary 32,000), ``--batch × --seq`` tokens, SDPA
  attention, no activation checkpointing. Weights are random: speed does not depend on
  their values, and nothing is downloaded.
- **FLOPs per token** (Chowdhery et al., 2022, "PaLM", appendix B: ``6N + 12·L·d·s`` for
  full training), with the frozen base's weight gradients removed — a third of ``6N``::

      F = 4·N + 12·L·d·s

  ``N``: the frozen matmul weights (every ``nn.Linear`` of the base, head included), ``L``
  blocks, ``d`` hidden size, ``s`` sequence length (attention counted in full, as PaLM
  does). LoRA's own FLOPs (r ≪ d) are not counted, so the figure is the base model's.
  ``MFU = F · tokens / step time / peak``.

``--chunked-loss N`` computes the next-token loss over the vocabulary N tokens at a time,
each chunk's logits recomputed in the backward pass (``torch.utils.checkpoint``), so the
``batch × seq × vocabulary`` float32 logits never exist at once (1 GiB at batch 4 × 2,048,
with their gradient): the step's largest memory-bound tensor, and what kept batch 8 off an
H200. The head's matmul runs twice for it (2·V·d per token more, about 2 % of ``4N``, not
counted). The step first checks that its loss equals the model's own to 1e-3 (relative),
and ``--tiny`` that its gradients do too.

``--merged-lora`` trains each LoRA projection through one matmul with the merged weight
``W + s·B·A`` (made in the forward pass and again in the backward pass, never kept:
``d_out × d_in`` elements each time, and a rank-r matmul) instead of peft's base matmul plus
a side path that reads the input again and writes, reads and adds a full-size output
(forward), and does as much again in the backward pass. The gradients of A and B are the
same products as peft's. In bf16 the merged weight is rounded once more (as merged
inference is); in float32 ``--tiny`` checks loss and gradients equal peft's to 1e-3.

``--tiny`` runs the same code on a two-block model on the CPU (the check that the script
works where no GPU is; its numbers mean nothing). Prints JSON; ``--out`` writes it.

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_mfu.py --out gpu_mfu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)  # fmt: skip
SHAPE_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=128)  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """The best measured FLOP/s of an ``n×n @ n×n`` matmul (``2n³`` FLOPs)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):  # warm-up (kernel choice, clocks)
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def lora_llama(shape: dict[str, int], rank: int, device: torch.device, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    """A randomly initialised LLaMA of ``shape`` with LoRA on every block projection."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, attn_implementation="sdpa")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: no fp32 copy of 7B weights
    try:
        with torch.device(device):
            base = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    frozen = sum(m.in_features * m.out_features for m in base.modules()
                 if isinstance(m, nn.Linear))  # fmt: skip
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS)
    return get_peft_model(base, lora), frozen


class _MergedLoRA(torch.autograd.Function):
    """``y = x (W + s·B A)ᵀ``: one matmul with the merged weight, which the backward pass
    makes again rather than keeping (W frozen: no gradient)."""

    @staticmethod
    def forward(ctx, x, weight, a, b, scaling):  # type: ignore[no-untyped-def,override]
        ctx.save_for_backward(x, weight, a, b)
        ctx.scaling = scaling
        return nn.functional.linear(x, torch.addmm(weight, b, a, alpha=scaling))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        x, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        grad_x = grad @ torch.addmm(weight, b, a, alpha=s)
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_a = (g2 @ b).t() @ x2 * s  # r × d_in
        grad_b = g2.t() @ (x2 @ a.t()) * s  # d_out × r
        return grad_x, None, grad_a, grad_b, None


def merge_lora(model: nn.Module) -> int:
    """Routes every peft LoRA ``Linear`` (one adapter, no dropout, no bias) through
    ``_MergedLoRA``; returns how many. ``unmerge_lora`` puts peft's forward back."""
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    def forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapters[0]
        return _MergedLoRA.apply(
            x, self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight,
            self.scaling[name],
        )  # fmt: skip

    count = 0
    for m in model.modules():
        if isinstance(m, LoraLinear):
            name = m.active_adapters[0]
            if m.base_layer.bias is not None or not isinstance(m.lora_dropout[name], nn.Identity):
                raise SystemExit("--merged-lora needs LoRA without bias or dropout")
            m.forward = types.MethodType(forward, m)
            count += 1
    return count


def unmerge_lora(model: nn.Module) -> None:
    for m in model.modules():
        if "forward" in vars(m):
            del m.forward


def chunked_loss(model: nn.Module, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    """The model's mean next-token cross-entropy, its logits made ``chunk`` tokens at a time
    and dropped (recomputed in the backward pass)."""
    from torch.utils.checkpoint import checkpoint

    llama = model.get_base_model()
    hidden = (
        llama.model(input_ids=tokens)
        .last_hidden_state[:, :-1]
        .reshape(-1, llama.config.hidden_size)
    )
    targets = tokens[:, 1:].reshape(-1)
    head = llama.lm_head

    def part(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head(h).float(), y, reduction="sum")

    total = sum(
        checkpoint(part, h, y, use_reentrant=False)
        for h, y in zip(hidden.split(chunk), targets.split(chunk), strict=True)
    )
    return total / targets.numel()


def loss_of(model: nn.Module, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    if chunk:
        return chunked_loss(model, tokens, chunk)
    return model(input_ids=tokens, labels=tokens).loss


def check_against_peft(
    model: nn.Module, tokens: torch.Tensor, chunk: int, merged: bool, grads: bool
) -> float:
    """The relative distance of this step's loss (chunked, merged LoRA) from the model's
    own through peft's forward (and, with ``grads``, of the LoRA gradients, after one
    optimiser-like nudge of B so that B·A is not zero); raises past 1e-3."""
    params = [p for p in model.parameters() if p.requires_grad]
    if grads:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.01 * torch.randn_like(p))

    def run(c: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = loss_of(model, tokens, c)
        if not grads:
            return loss.detach(), []
        got = torch.autograd.grad(loss, params)
        return loss.detach(), [g.float() for g in got]

    with torch.no_grad() if not grads else torch.enable_grad():
        ref, ref_g = run(0)
        if merged:
            merge_lora(model)
        mine, mine_g = run(chunk)
    worst = float((mine - ref).abs() / ref.abs())
    for a, b in zip(mine_g, ref_g, strict=True):
        worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-12)))
    if worst > 1e-3:
        raise SystemExit(f"this step's loss is {worst:.2e} from peft's own (> 1e-3)")
    return worst


def step_times(
    model: nn.Module, tokens: torch.Tensor, steps: int, warmup: int, chunk: int = 0
) -> list[float]:
    """Seconds of each timed forward + backward + AdamW step (after ``warmup`` steps)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for step in range(warmup + steps):
        sync(tokens.device)
        start = time.perf_counter()
        loss_of(model, tokens, chunk).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(tokens.device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="two small blocks on the CPU")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-n", type=int, default=8192)
    ap.add_argument("--peak-repeats", type=int, default=20)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each decoder block (the blocks share one graph)",
    )
    ap.add_argument(
        "--chunked-loss",
        type=int,
        default=0,
        metavar="N",
        help="the loss over the vocabulary N tokens at a time (0: the model's own)",
    )
    ap.add_argument(
        "--merged-lora",
        action="store_true",
        help="each LoRA projection as one matmul with W + s·B·A (remade in backward)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.tiny:
        device, dtype, shape = torch.device("cpu"), torch.float32, SHAPE_TINY
        args.batch, args.seq, args.steps, args.warmup, args.peak_n = 2, 32, 2, 1, 256
    else:
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, SHAPE_7B
    peak = matmul_peak(device, dtype, args.peak_n, args.peak_repeats)
    model, frozen = lora_llama(shape, args.rank, device, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), device=device,
                           generator=g)  # fmt: skip
    check_error = None
    if args.chunked_loss or args.merged_lora:  # against peft's own step; grads when tiny
        check = tokens[:1, : min(args.seq, 512)]
        check_error = check_against_peft(
            model, check, args.chunked_loss, args.merged_lora, grads=args.tiny
        )  # leaves the LoRA layers merged when asked: before compiling, which traces them
    if args.compile:  # regional: one block's graph serves all of them, so compiling is quick
        for block in model.get_base_model().model.layers:
            block.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    times = step_times(model, tokens, args.steps, args.warmup, args.chunked_loss)
    total_s = time.perf_counter() - started
    layers, d, s = shape["num_hidden_layers"], shape["hidden_size"], args.seq
    flops_per_token = 4 * frozen + 12 * layers * d * s
    step_s = statistics.median(times)
    achieved = flops_per_token * args.batch * args.seq / step_s
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "shape": shape, "rank": args.rank, "batch": args.batch,
        "seq": args.seq, "compiled": args.compile, "chunked_loss": args.chunked_loss,
        "merged_lora": args.merged_lora, "error_vs_peft": check_error,
        "warmup_s": total_s - sum(times), "frozen_matmul_params": frozen,
        "flops_per_token": flops_per_token,
        "matmul_peak_tflops": peak / 1e12, "median_step_s": step_s,
        "tokens_per_s": args.batch * args.seq / step_s, "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak, "target_mfu": 0.45,
        "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda" else 0.0,
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
