"""How far the separate average of A and B (FedPEFT's weighted LoRA rule) is from the exact
average of the products, on real client updates of the default federation.

For every LoRA module: ``err = ‖B̄·Ā − Σ_c p_c B_c A_c‖_F / ‖Σ_c p_c B_c A_c − B₀A₀‖_F``, the
error relative to the size of the round's exact update (B₀A₀: the product clients started
from). One round of the default job (10 clients, Dirichlet 0.5), starting either from the
fresh adapter or from a run's final checkpoint (``--from-run runs/<id>``).

    .venv/bin/python benchmarks/lora_aggregation_error.py [--from-run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from fedpeft.aggregation.lora import lora_pairs, lora_product, weighted_lora
from fedpeft.compression import decode, encode
from fedpeft.config import load_config
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import LocalClientPool
from fedpeft.server.configure import instruction_for
from fedpeft.server.store import RunStore
from fedpeft.server.task import build_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-run", type=Path)
    ap.add_argument("--round", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config()
    task = build_task(cfg)
    start = get_adapter_state(task.model)
    if args.from_run:
        groups = RunStore.open_existing(args.from_run).load_checkpoint().adapters
        start = groups["global"]
    pool = LocalClientPool(task)
    down = encode(start, {"round": args.round})
    updates = []
    for cid in range(cfg.data.num_clients):
        state, meta = decode(pool.fit(instruction_for(cfg, args.round, cid), down))
        updates.append((state, float(meta["num_examples"])))
    exact = lora_product(updates)
    separate = lora_product([(weighted_lora(updates), 1.0)])
    begin = lora_product([(start, 1.0)])
    errors = {}
    for a_key, _ in lora_pairs(start):
        name = a_key.split(".lora_A")[0]
        delta = (exact[name] - begin[name]).norm()
        errors[name] = float((separate[name] - exact[name]).norm() / delta)
    values = list(errors.values())
    print(
        json.dumps(
            {
                "start": str(args.from_run or "fresh adapter"),
                "modules": len(values),
                "median_relative_error": statistics.median(values),
                "max_relative_error": max(values),
                "min_relative_error": min(values),
                "per_module": errors,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
