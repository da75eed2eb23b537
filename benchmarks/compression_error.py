"""Compressed LoRA updates, measured on real client updates: bytes per message and error.

Trains the default federation (all-MiniLM-L6-v2 + LoRA r=8 on q/v + classifier, 10
clients, Dirichlet 0.5, 1 local epoch) for ``--rounds`` rounds, each round starting from
the FedAvg of the previous one's exact updates, and compresses every client's delta
``Δ_c = θ_c − θ_served`` under each scheme. For each scheme it reports:

- ``bytes``: the mean ``len(payload)`` of a client's message (with the client's real reply
  metadata), against today's float32 codec and against full fine-tuning's
  ``task.full_model_bytes``;
- ``client_rel_error``: median over clients of ``‖Δ̂_c − Δ_c‖ / ‖Δ_c‖`` (whole state);
- ``fedavg_rel_error``: ``‖Σ p_c Δ̂_c − Σ p_c Δ_c‖ / ‖Σ p_c Δ_c‖`` (what FedAvg applies);
- ``product_rel_error``: per LoRA module ``‖Σ p_c B̂_c Â_c − Σ p_c B_c A_c‖_F /
  ‖Σ p_c B_c A_c − B₀A₀‖_F`` (exact product aggregation of quantised factors), median/max.

and, for ``quantise the product``, each client sends ``D_c = B_c A_c − B₀A₀`` per module
(d_out × d_in values instead of r·(d_in + d_out)) and the error is
``‖Σ p_c D̂_c − Σ p_c D_c‖ / ‖Σ p_c D_c‖``. Stochastic schemes are repeated with 3
generator seeds (mean and standard deviation). One round has no error-feedback history
(the residual starts at zero), so these are single-message errors.

    nice -n 10 .venv/bin/python benchmarks/compression_error.py \
        [--rounds 2] [--dataset sst2] [--cache /tmp/updates.safetensors] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedpeft.aggregation.lora import lora_pairs
from fedpeft.compression import CompressionScheme, decode, encode, encode_delta
from fedpeft.config import load_config
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool
from fedpeft.server.loop import instruction_for
from fedpeft.server.task import build_task
from fedpeft.types import AdapterState

Update = tuple[AdapterState, float, dict[str, Any]]  # state, examples, reply metadata
SEEDS = (0, 1, 2)


def collect(dataset: str, rounds: int) -> tuple[list[tuple[AdapterState, list[Update]]], int]:
    """Each round's served state and client replies, and the full model's bytes."""
    cfg = load_config(overrides=[f"data.dataset='{dataset}'"])
    task = build_task(cfg)
    pool = LocalClientPool(task)
    start = get_adapter_state(task.model)
    out = []
    for rnd in range(1, rounds + 1):
        down = encode(start, {"round": rnd})
        updates = []
        for cid in range(cfg.data.num_clients):
            state, meta = decode(pool.fit(instruction_for(cfg, rnd, cid), down))
            updates.append((state, float(meta["num_examples"]), meta))
        out.append((start, updates))
        total = sum(n for _, n, _ in updates)
        start = {k: sum(s[k] * (n / total) for s, n, _ in updates) for k in start}
    return out, task.full_model_bytes


def save_cache(path: Path, rounds: list[tuple[AdapterState, list[Update]]], full: int) -> None:
    tensors, meta = {}, {"full_model_bytes": full, "rounds": []}
    for r, (start, updates) in enumerate(rounds):
        tensors |= {f"{r}/start/{k}": v for k, v in start.items()}
        for c, (state, _, _) in enumerate(updates):
            tensors |= {f"{r}/{c}/{k}": v for k, v in state.items()}
        meta["rounds"].append([m for _, _, m in updates])  # type: ignore[union-attr]
    path.write_bytes(encode(tensors, meta))


def load_cache(path: Path) -> tuple[list[tuple[AdapterState, list[Update]]], int]:
    tensors, meta = decode(path.read_bytes())
    out = []
    for r, metas in enumerate(meta["rounds"]):  # type: ignore[arg-type]
        start = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{r}/start/")}
        updates = []
        for c, m in enumerate(metas):
            p = f"{r}/{c}/"
            state = {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
            updates.append((state, float(m["num_examples"]), m))
        out.append((start, updates))
    return out, int(meta["full_model_bytes"])  # type: ignore[call-overload]


def norm(state: dict[str, torch.Tensor]) -> float:
    return float(sum(v.double().pow(2).sum() for v in state.values())) ** 0.5


def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: a[k].double() - b[k].double() for k in a}


def weighted(states: list[dict[str, torch.Tensor]], p: list[float]) -> dict[str, torch.Tensor]:
    return {k: sum(w * s[k].double() for s, w in zip(states, p, strict=True)) for k in states[0]}


def products(state: AdapterState, start: AdapterState) -> dict[str, torch.Tensor]:
    """``B A − B₀ A₀`` for every LoRA module (float64)."""
    return {
        a: state[b].double() @ state[a].double() - start[b].double() @ start[a].double()
        for a, b in lora_pairs(start)
    }


def factor_trial(
    start: AdapterState, updates: list[Update], scheme: CompressionScheme, seed: int
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    total = sum(n for _, n, _ in updates)
    p = [n / total for _, n, _ in updates]
    deltas = [diff(s, start) for s, _, _ in updates]
    sizes, decoded = [], []
    for (_, _, meta), delta in zip(updates, deltas, strict=True):
        sent = encode_delta({k: v.float() for k, v in delta.items()}, scheme, None, gen, meta)
        sizes.append(len(sent.payload))
        decoded.append(sent.decoded)
    exact, approx = weighted(deltas, p), weighted(decoded, p)
    hat = [{k: start[k].double() + d[k].double() for k in start} for d in decoded]
    true_prod = weighted([products(s, start) for s, _, _ in updates], p)
    hat_prod = weighted([products(h, start) for h in hat], p)  # type: ignore[arg-type]
    per_module = [
        float((hat_prod[m] - true_prod[m]).norm() / true_prod[m].norm()) for m in true_prod
    ]
    return {
        "bytes": statistics.mean(sizes),
        "client_rel_error": statistics.median(
            norm(diff(d, x)) / norm(x) for d, x in zip(decoded, deltas, strict=True)
        ),
        "fedavg_rel_error": norm(diff(approx, exact)) / norm(exact),
        "product_rel_error_median": statistics.median(per_module),
        "product_rel_error_max": max(per_module),
    }


def product_trial(
    start: AdapterState, updates: list[Update], scheme: CompressionScheme, seed: int
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    total = sum(n for _, n, _ in updates)
    p = [n / total for _, n, _ in updates]
    exact_d = [products(s, start) for s, _, _ in updates]
    sizes, decoded = [], []
    for (_, _, meta), d in zip(updates, exact_d, strict=True):
        sent = encode_delta({k: v.float() for k, v in d.items()}, scheme, None, gen, meta)
        sizes.append(len(sent.payload))
        decoded.append(sent.decoded)
    exact, approx = weighted(exact_d, p), weighted(decoded, p)
    per_module = [float((approx[m] - exact[m]).norm() / exact[m].norm()) for m in exact]
    return {
        "bytes": statistics.mean(sizes),
        "product_rel_error_median": statistics.median(per_module),
        "product_rel_error_max": max(per_module),
    }


def repeat(trial: Any, start: AdapterState, updates: list[Update], s: CompressionScheme) -> dict:
    runs = [trial(start, updates, s, seed) for seed in (SEEDS if s.random else SEEDS[:1])]
    out: dict[str, Any] = {"scheme": s.name, "seeds": len(runs)}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = statistics.mean(values)
        if len(values) > 1 and key != "bytes":
            out[key + "_std"] = statistics.stdev(values)
    return out


def factor_schemes() -> list[CompressionScheme]:
    base = CompressionScheme(error_feedback=False)
    out = [base]
    for rounding in ("stochastic", "nearest"):
        out += [replace(base, bits=16, rounding=rounding, half=h) for h in ("fp16", "bf16")]  # type: ignore[arg-type]
        for bits in (8, 4, 2):
            out += [
                replace(base, bits=bits, rounding=rounding, group_size=g)  # type: ignore[arg-type]
                for g in (32, 64, 128, None)
            ]
    for topk in (0.1, 0.01):
        out += [replace(base, bits=b, topk=topk) for b in (32, 8, 4)]
    return out


def product_schemes() -> list[CompressionScheme]:
    base = CompressionScheme(error_feedback=False)
    out = [base]
    for rounding in ("stochastic", "nearest"):
        out += [replace(base, bits=b, rounding=rounding) for b in (16, 8, 4, 2)]  # type: ignore[arg-type]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compression_error.json"))
    args = ap.parse_args()
    if args.cache and args.cache.exists():
        rounds, full = load_cache(args.cache)
    else:
        rounds, full = collect(args.dataset, args.rounds)
        if args.cache:
            save_cache(args.cache, rounds, full)
    result: dict[str, Any] = {"dataset": args.dataset, "full_model_bytes": full, "rounds": []}
    for r, (start, updates) in enumerate(rounds, 1):
        plain = statistics.mean(len(encode(s, m)) for s, _, m in updates)
        lora_keys = {k for pair in lora_pairs(start) for k in pair}
        lora_only = [({k: s[k] for k in lora_keys}, n, m) for s, n, m in updates]
        lora_start = {k: start[k] for k in lora_keys}
        factors = [repeat(factor_trial, start, updates, s) for s in factor_schemes()]
        for row in factors:
            row["vs_fp32_codec"] = plain / row["bytes"]
            row["vs_full_finetuning"] = full / row["bytes"]
        lora_bytes = {
            s.name: repeat(factor_trial, lora_start, lora_only, s)["bytes"]
            for s in product_schemes()
        }
        product = [repeat(product_trial, start, updates, s) for s in product_schemes()]
        for row in product:
            row["factor_message_bytes"] = lora_bytes[row["scheme"]]
        result["rounds"].append(
            {"round": r, "fp32_codec_bytes": plain, "factors": factors, "product": product}
        )
        print(f"round {r}: today's fp32 codec {plain:,.0f} B a message, full model {full:,} B")
        for row in factors:
            print(
                f"  {row['scheme']:<22} {row['bytes']:>9,.0f} B  ×{row['vs_fp32_codec']:6.1f}"
                f"  client {row['client_rel_error']:.4f}  fedavg {row['fedavg_rel_error']:.4f}"
                f"  BA {row['product_rel_error_median']:.4f}"
            )
        for row in product:
            print(
                f"  product {row['scheme']:<14} {row['bytes']:>10,.0f} B"
                f" (factors {row['factor_message_bytes']:,.0f} B)"
                f"  BA {row['product_rel_error_median']:.4f}"
            )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
