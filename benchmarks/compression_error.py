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
        [--rounds 2] [--dataset sst2] [--cache /tmp/updates.safetensors] [--collect-only] \
        [--analyse 1 2] [--parts factors product]

Each analysed round is written to ``benchmarks/results/compression_error_<dataset>.json`` as
soon as it is done (rounds already there are kept), so the work splits into short runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedpeft.aggregation.lora import lora_pairs
from fedpeft.compression import (
    CompressionScheme,
    decode,
    encode,
    encode_delta,
    layout_of,
    message_bytes,
)
from fedpeft.config import load_config
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from fedpeft.types import AdapterState

Update = tuple[AdapterState, float, dict[str, Any]]  # state, examples, reply metadata
Round = tuple[AdapterState, list[Update]]  # the state served, the replies
SEEDS = (0, 1, 2)


def fedavg(updates: list[Update]) -> AdapterState:
    total = sum(n for _, n, _ in updates)
    return {k: sum(s[k] * (n / total) for s, n, _ in updates) for k in updates[0][0]}


def collect(dataset: str, rounds: int, cache: Path | None) -> tuple[list[Round], int]:
    """Each round's served state and client replies, and the full model's bytes. Rounds
    already in ``cache`` are read from it; each new round is added to it when done, so a
    long collection can run as several shorter invocations."""
    done, full = load_cache(cache, dataset) if cache and cache.exists() else ([], 0)
    if len(done) >= rounds:
        return done[:rounds], full
    cfg = load_config(overrides=[f"data.dataset='{dataset}'"])
    task = build_task(cfg)
    pool = LocalClientPool(task)
    start = fedavg(done[-1][1]) if done else get_adapter_state(task.model)
    for rnd in range(len(done) + 1, rounds + 1):
        down = encode(start, {"round": rnd})
        updates = []
        for cid in range(cfg.data.num_clients):
            state, meta = decode(pool.fit(instruction_for(cfg, rnd, cid), down))
            updates.append((state, float(meta["num_examples"]), meta))
        done.append((start, updates))
        if cache:
            save_cache(cache, done, task.full_model_bytes, dataset)
        print(f"collected round {rnd}", flush=True)
        start = fedavg(updates)
    return done, task.full_model_bytes


def save_cache(path: Path, rounds: list[Round], full: int, dataset: str) -> None:
    tensors, meta = {}, {"full_model_bytes": full, "dataset": dataset, "rounds": []}
    for r, (start, updates) in enumerate(rounds):
        tensors |= {f"{r}/start/{k}": v for k, v in start.items()}
        for c, (state, _, _) in enumerate(updates):
            tensors |= {f"{r}/{c}/{k}": v for k, v in state.items()}
        meta["rounds"].append([m for _, _, m in updates])  # type: ignore[union-attr]
    path.write_bytes(encode(tensors, meta))


def load_cache(path: Path, dataset: str) -> tuple[list[Round], int]:
    tensors, meta = decode(path.read_bytes())
    if meta.get("dataset", dataset) != dataset:
        raise SystemExit(f"{path} holds {meta['dataset']} updates, not {dataset}")
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


@dataclass(frozen=True)
class Prepared:
    """One round's exact quantities, computed once for every scheme."""

    start: AdapterState
    p: list[float]  # p_c = n_c / Σ n
    metas: list[dict[str, Any]]  # each client's reply metadata (travels with its message)
    deltas: list[dict[str, torch.Tensor]]  # Δ_c (float64)
    fedavg: dict[str, torch.Tensor]  # Σ p_c Δ_c
    client_products: list[dict[str, torch.Tensor]]  # D_c = B_c A_c − B₀A₀
    product: dict[str, torch.Tensor]  # Σ p_c D_c


def prepare(start: AdapterState, updates: list[Update]) -> Prepared:
    total = sum(n for _, n, _ in updates)
    p = [n / total for _, n, _ in updates]
    deltas = [diff(s, start) for s, _, _ in updates]
    client_products = [products(s, start) for s, _, _ in updates]
    return Prepared(
        start,
        p,
        [m for _, _, m in updates],
        deltas,
        weighted(deltas, p),
        client_products,
        weighted(client_products, p),
    )


def send_all(
    prep: Prepared, states: list[dict[str, torch.Tensor]], scheme: CompressionScheme, seed: int
) -> tuple[float, list[AdapterState]]:
    """Every client's message of ``states``: mean bytes and what the server decodes."""
    gen = torch.Generator().manual_seed(seed)
    sizes, decoded = [], []
    for meta, state in zip(prep.metas, states, strict=True):
        sent = encode_delta({k: v.float() for k, v in state.items()}, scheme, None, gen, meta)
        sizes.append(len(sent.payload))
        decoded.append(sent.decoded)
    return statistics.mean(sizes), decoded


def factor_trial(prep: Prepared, scheme: CompressionScheme, seed: int) -> dict[str, Any]:
    size, decoded = send_all(prep, prep.deltas, scheme, seed)
    approx = weighted(decoded, prep.p)  # type: ignore[arg-type]
    hat = [{k: prep.start[k].double() + d[k].double() for k in prep.start} for d in decoded]
    hat_prod = weighted([products(h, prep.start) for h in hat], prep.p)  # type: ignore[arg-type]
    true = prep.product
    per_module = [float((hat_prod[m] - true[m]).norm() / true[m].norm()) for m in true]
    return {
        "bytes": size,
        "client_rel_error": statistics.median(
            norm(diff(d, x)) / norm(x) for d, x in zip(decoded, prep.deltas, strict=True)
        ),
        "fedavg_rel_error": norm(diff(approx, prep.fedavg)) / norm(prep.fedavg),
        "product_rel_error_median": statistics.median(per_module),
        "product_rel_error_max": max(per_module),
    }


def product_trial(prep: Prepared, scheme: CompressionScheme, seed: int) -> dict[str, Any]:
    size, decoded = send_all(prep, prep.client_products, scheme, seed)
    approx, exact = weighted(decoded, prep.p), prep.product  # type: ignore[arg-type]
    per_module = [float((approx[m] - exact[m]).norm() / exact[m].norm()) for m in exact]
    return {
        "bytes": size,
        "product_rel_error_median": statistics.median(per_module),
        "product_rel_error_max": max(per_module),
    }


def repeat(trial: Any, prep: Prepared, s: CompressionScheme) -> dict[str, Any]:
    runs = [trial(prep, s, seed) for seed in (SEEDS if s.random else SEEDS[:1])]
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


def analyse_round(
    start: AdapterState, updates: list[Update], full: int, parts: set[str]
) -> dict[str, Any]:
    """``factors`` and/or ``product`` (the ``parts`` asked for) of one round."""
    plain = statistics.mean(len(encode(s, m)) for s, _, m in updates)
    prep = prepare(start, updates)
    out: dict[str, Any] = {"fp32_codec_bytes": plain}
    if "factors" in parts:
        out["factors"] = [repeat(factor_trial, prep, s) for s in factor_schemes()]
        for row in out["factors"]:
            row["vs_fp32_codec"] = plain / row["bytes"]
            row["vs_full_finetuning"] = full / row["bytes"]
    if "product" in parts:
        lora_keys = {k for pair in lora_pairs(start) for k in pair}
        lora_layout = layout_of({k: start[k] for k in lora_keys})
        out["product"] = [repeat(product_trial, prep, s) for s in product_schemes()]
        for row, s in zip(out["product"], product_schemes(), strict=True):
            row["factor_message_bytes"] = statistics.mean(
                message_bytes(lora_layout, s, m) for _, _, m in updates
            )
    return out


def print_round(r: int, row: dict[str, Any], full: int) -> None:
    print(f"round {r}: fp32 codec {row['fp32_codec_bytes']:,.0f} B a message, full {full:,} B")
    for f in row.get("factors", []):
        print(
            f"  {f['scheme']:<22} {f['bytes']:>9,.0f} B  ×{f['vs_fp32_codec']:6.1f}"
            f"  client {f['client_rel_error']:.4f}  fedavg {f['fedavg_rel_error']:.4f}"
            f"  BA {f['product_rel_error_median']:.4f}",
            flush=True,
        )
    for p in row.get("product", []):
        print(
            f"  product {p['scheme']:<14} {p['bytes']:>10,.0f} B"
            f" (factors {p['factor_message_bytes']:,.0f} B)"
            f"  BA {p['product_rel_error_median']:.4f}",
            flush=True,
        )


def plot_errors(result: dict[str, Any], path: Path) -> None:
    """Aggregated error against bytes a message, one panel per analysed round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in result["rounds"] if "factors" in r and "product" in r]
    if not rounds:
        return
    fig, axes = plt.subplots(1, len(rounds), figsize=(6 * len(rounds), 4), dpi=120, squeeze=False)
    for ax, r in zip(axes[0], rounds, strict=True):
        groups = {
            "factors, stochastic": [f for f in r["factors"] if "/sr" in f["scheme"]],
            "factors, nearest": [f for f in r["factors"] if "/rn" in f["scheme"]],
            "factors, top-k": [f for f in r["factors"] if "top" in f["scheme"]],
            "product ΔW": r["product"],
        }
        for label, rows in groups.items():
            key = "product_rel_error_median"
            ax.scatter([x["bytes"] for x in rows], [x[key] for x in rows], s=12, label=label)
        ax.axvline(r["fp32_codec_bytes"], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("bytes a client message (dashed: today's fp32 codec)")
        ax.set_ylabel("rel. error of Σ p_c B_c A_c (median module)")
        ax.set_title(f"{result['dataset']}, round {r['round']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--collect-only", action="store_true", help="fill the cache, then stop")
    ap.add_argument("--analyse", type=int, nargs="*", help="only these rounds (default: all)")
    ap.add_argument(
        "--parts", nargs="+", choices=["factors", "product"], default=["factors", "product"]
    )
    args = ap.parse_args()
    rounds, full = collect(args.dataset, args.rounds, args.cache)
    if args.collect_only:
        return
    out = args.out or Path(f"benchmarks/results/compression_error_{args.dataset}.json")
    result: dict[str, Any] = {"dataset": args.dataset, "full_model_bytes": full, "rounds": []}
    if out.exists():  # rounds analysed by earlier invocations are kept
        result = json.loads(out.read_text())
    for r, (start, updates) in enumerate(rounds, 1):
        if args.analyse and r not in args.analyse:
            continue
        before = next((x for x in result["rounds"] if x["round"] == r), {"round": r})
        row = before | analyse_round(start, updates, full, set(args.parts))
        kept = [x for x in result["rounds"] if x["round"] != r]
        result["rounds"] = sorted([*kept, row], key=lambda x: x["round"])
        out.write_text(json.dumps(result, indent=2) + "\n")
        print_round(r, row, full)
    plot_errors(result, out.with_suffix(".png"))


if __name__ == "__main__":
    torch.set_num_threads(1)  # small matmuls; one thread wastes less on a shared machine
    main()
