"""A minimal synchronous round loop over fedpeft's real parts (task, client training,
aggregation, evaluation) for the server-side methods the round loop does not run yet:
SCAFFOLD (per-client control variates), FedExP (server extrapolation) and FedNova.

Every client trains exactly as in ``fedpeft run`` (``instruction_for`` → ``train``, the same
seeds); with none of the three switched on it is FedAvg (+ the configured server optimiser)
and gives ``fedpeft run``'s accuracy per round (checked on tiny-bert, 3 clients, 3 rounds,
logit adjustment and FedAvgM: identical).

    PYTHONPATH=src .venv/bin/python benchmarks/lora_loop.py --out R.json \
        --set "data.dataset='banking77'" --set run.rounds=6 --scaffold
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedpeft.aggregation.drift import fedexp, fedexp_lr, fednova, server_control, zeros_like_state
from fedpeft.aggregation.head_init import lda_head, ncm_head, sum_stats
from fedpeft.client import ClientData, train
from fedpeft.client.features import class_feature_stats
from fedpeft.client.scaffold import train_scaffold
from fedpeft.config import load_config
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.server.configure import instruction_for
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.strategy import strategy_from_config
from fedpeft.server.task import build_task


def head_init(task, glob, rule):  # type: ignore[no-untyped-def]
    """Every client's class feature statistics → the head at round 0 (``ncm`` or ``lda``)."""
    stats = []
    for part in task.data.partitions:
        set_adapter_state(task.model, {k: v.to(task.device) for k, v in glob.items()})
        data = ClientData(task.data.train, part)
        n = task.data.dataset.num_labels
        stats.append(class_feature_stats(task.model, data, n, task.eval_batch_size, task.device))
    return (ncm_head if rule == "ncm" else lda_head)(glob, sum_stats(stats))


def run(
    sets: list[str], scaffold: bool, use_fedexp: bool, use_fednova: bool, init: str = "random"
) -> dict[str, object]:
    cfg = load_config(overrides=sets)
    task = build_task(cfg)
    strategy = strategy_from_config(cfg.server)
    glob = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}
    round0 = None
    if init != "random":
        glob = head_init(task, glob, init)
        set_adapter_state(task.model, {k: v.to(task.device) for k, v in glob.items()})
        round0 = evaluate_model(task.model, task.data.eval, task.eval_batch_size, task.device)
        print(json.dumps({"round": 0, **round0}), flush=True)
    opt_state: dict = {}
    c = zeros_like_state(glob)
    c_local = [zeros_like_state(glob) for _ in task.data.partitions]
    rows = []
    for rnd in range(1, cfg.run.rounds + 1):
        start = time.perf_counter()
        updates, deltas, etas = [], [], []
        for cid, part in enumerate(task.data.partitions):
            set_adapter_state(task.model, {k: v.to(task.device) for k, v in glob.items()})
            ins = instruction_for(cfg, rnd, cid)
            data = ClientData(task.data.train, part)
            if scaffold:
                reply = train_scaffold(task.model, ins, data, task.device, c, c_local[cid])
                update = reply.update
                deltas.append(reply.control_delta)
                c_local[cid] = reply.local_control
            else:
                update = train(task.model, ins, data, task.device)
            state = {k: v.cpu() for k, v in update.state.items()}
            updates.append((state, float(update.num_examples), update.metrics["steps"]))
        pairs = [(s, n) for s, n, _ in updates]
        if use_fednova:
            agg = fednova(glob, updates)
        elif use_fedexp:
            etas.append(fedexp_lr(glob, pairs))
            agg = fedexp(glob, pairs)
        else:
            agg = strategy.aggregate(pairs)
        if strategy.server_optimizer is not None:
            glob, opt_state = strategy.server_optimizer(glob, agg, opt_state)
        else:
            glob = agg
        if scaffold:
            c = server_control(c, deltas, len(task.data.partitions))
        set_adapter_state(task.model, {k: v.to(task.device) for k, v in glob.items()})
        ev = evaluate_model(task.model, task.data.eval, task.eval_batch_size, task.device)
        rows.append(
            {
                "round": rnd,
                **ev,
                "eta": etas[-1] if etas else None,
                "s": time.perf_counter() - start,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "sets": sets,
        "scaffold": scaffold,
        "fedexp": use_fedexp,
        "fednova": use_fednova,
        "head_init": init,
        "round0": round0,
        "accuracy_per_round": [r["accuracy"] for r in rows],
        "macro_f1_per_round": [r["macro_f1"] for r in rows],
        "eta_per_round": [r["eta"] for r in rows],
        "final_accuracy": rows[-1]["accuracy"],
        "final_macro_f1": rows[-1]["macro_f1"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--scaffold", action="store_true")
    ap.add_argument("--fedexp", action="store_true")
    ap.add_argument("--fednova", action="store_true")
    ap.add_argument("--head-init", choices=["random", "ncm", "lda"], default="random")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = run(args.set, args.scaffold, args.fedexp, args.fednova, args.head_init)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
