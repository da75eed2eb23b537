"""Secure aggregation's overhead: bytes and seconds of a SecAgg/SecAgg+ round against a plain
round, for 10 and 100 clients sending MiniLM-L6's LoRA r=8 update (issue 17).

Ratios (×) compare with a plain round of the same survivors. The update size is the
method's exact trainable-parameter count on the model's config (no weights load). Each
client's input is a random vector of that length; every protocol message goes through its
byte form (``fedpeft.privacy.secagg.secure_sum``). The plain round is the codec's float32
payload per client and a float64 FedAvg sum at the server.

    .venv/bin/python benchmarks/secagg_overhead.py --out benchmarks/results/secagg_overhead.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpeft.aggregation import fedavg
from fedpeft.compression import encode
from fedpeft.models import get_model_spec, load_model_config
from fedpeft.peft import architecture, parse_spec
from fedpeft.privacy.secagg import FixedPoint, secure_sum, threshold_for


def update_length(model: str, method: str) -> int:
    spec = get_model_spec(model)
    return parse_spec(method, {}).trainable_params(architecture(load_model_config(spec, 2), 2))


def plain_round(inputs: dict[int, np.ndarray]) -> dict[str, float]:
    states = {u: {"w": torch.from_numpy(x.astype(np.float32))} for u, x in inputs.items()}
    start = time.perf_counter()
    payloads = [encode(s, {"round": 1, "client_id": u}) for u, s in states.items()]
    client_s = (time.perf_counter() - start) / len(states)
    start = time.perf_counter()
    fedavg([(s, 1.0) for s in states.values()])
    return {
        "bytes_up_per_client": float(np.mean([len(p) for p in payloads])),
        "client_s_per_client": client_s,
        "server_s": time.perf_counter() - start,
    }


def secagg_round(
    inputs: dict[int, np.ndarray], neighbours: int | None, drop: float, fraction: float
) -> dict[str, Any]:
    """One round where the first ``drop`` fraction of clients vanish after sharing keys."""
    n = len(inputs)
    dropped = set(range(round(drop * n)))  # they vanish after sharing keys
    result, cost = secure_sum(
        inputs,
        fixed=FixedPoint(64, 32),
        neighbours=neighbours,
        threshold_fraction=fraction,
        drop_after_keys=dropped,
    )
    plain = np.sum([inputs[u] for u in result.survivors], axis=0)
    k = n - 1 if neighbours is None or neighbours >= n - 1 else neighbours
    return {
        "neighbours": k,
        "threshold": threshold_for(k, fraction),
        "dropped_after_keys": len(result.dropped),
        "max_abs_error": float(np.abs(result.total - plain).max()),
        "survivors": len(result.survivors),
        "bytes_up_per_client": sum(cost.bytes_up.values()) / n,
        "bytes_down_per_client": sum(cost.bytes_down.values()) / n,
        "client_s_per_client": sum(cost.client_s.values()) / n,
        "server_s": sum(cost.server_s.values()),
        "stages": cost.to_json(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--method", default="lora")
    args = ap.parse_args()
    torch.set_num_threads(1)
    length = update_length(args.model, args.method) + 1  # + the weight entry
    rows: list[dict[str, Any]] = []
    for n, variants in [
        (10, [(None, 0.0), (None, 0.3)]),
        (100, [(None, 0.0), (20, 0.0), (20, 0.1)]),
    ]:
        rng = np.random.default_rng(n)
        inputs = {u: rng.normal(scale=1e-2, size=length) for u in range(n)}
        plain = plain_round(inputs)
        for neighbours, drop in variants:
            row = secagg_round(inputs, neighbours, drop, 0.5)
            row |= {
                "clients": n,
                "drop": drop,
                "plain": plain,
                # against a plain round that receives the survivors' payloads
                "bytes_up_x": row["bytes_up_per_client"]
                * n
                / (plain["bytes_up_per_client"] * row["survivors"]),
                "client_time_x": row["client_s_per_client"] / plain["client_s_per_client"],
                "server_time_x": row["server_s"] / plain["server_s"],
            }
            rows.append(row)
            print(
                f"n={n} k={row['neighbours']} drop={drop:.0%}: up ×{row['bytes_up_x']:.2f}, "
                f"client {row['client_s_per_client'] * 1e3:.0f} ms, server {row['server_s']:.2f} s"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "method": args.method, "vector_length": length, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
