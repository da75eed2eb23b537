"""Layer-wise importance and clustered aggregation against FedAvg (MiniLM, SST-2).

Written before the run loop held several globals and a proxy set (``fedpeft run`` now runs
``layerwise``, ``clustered`` and ``kd_fusion`` itself, with the proxy held out of the train
split); this script drives the same parts directly, so that it can score personal accuracy:
the in-process client pool (one shared MiniLM), the wire
codec, reply validation and the registered rules. The server's proxy set is a seeded half of
the dev split (``--proxy`` examples); every rule is scored on the other half, so the proxy
never scores. Per round it records

- ``accuracy``: dev accuracy of the global (clustered: of each cluster's global, averaged with
  the cluster's share of examples);
- ``personal_accuracy``: each client's model (its cluster's global) scored on the dev
  examples re-weighted to that client's label mix, ``Σ_y h_c(y)·acc(y)``, averaged by n_c —
  what a client with that label skew would see.

    PYTHONPATH=src .venv/bin/python benchmarks/aggregators_more.py \
        --out benchmarks/results/aggregators_more_dir01.json --set data.alpha=0.1 \
        --set run.rounds=4 --set run.threads=1 --proxy 128
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedpeft.aggregation import align_labels, cluster_updates, clustered_fedavg
from fedpeft.compression import encode
from fedpeft.config import ServerConfig, load_config
from fedpeft.data import TokenizedSplit
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.runtime.local import LocalClientPool
from fedpeft.server.configure import instruction_for
from fedpeft.server.evaluate import predict_logits
from fedpeft.server.strategy import strategy_from_config
from fedpeft.server.task import Task, build_task
from fedpeft.server.validate import validate_reply
from fedpeft.types import AdapterState


def subset(split: TokenizedSplit, idx: np.ndarray) -> TokenizedSplit:
    return TokenizedSplit(
        [split.input_ids[i] for i in idx],
        split.labels[idx],
        split.pad_id,
        split.lengths[idx],
        split.pad_left,
    )


def scores(task: Task, state: AdapterState, split: TokenizedSplit) -> tuple[float, np.ndarray]:
    """(cross-entropy, per-class accuracy) of ``state`` on ``split``."""
    set_adapter_state(task.model, state)
    logits = predict_logits(task.model, split, task.eval_batch_size, task.device)
    labels = torch.from_numpy(split.labels)
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    hit = (logits.argmax(-1) == labels).numpy()
    classes = logits.shape[-1]
    per_class = np.array([hit[split.labels == y].mean() for y in range(classes)])
    return loss, per_class


def run_rule(
    rule: str, task: Task, init: AdapterState, proxy: TokenizedSplit, test: TokenizedSplit
) -> dict:
    cfg = task.cfg
    pool = LocalClientPool(task)
    n_clients = cfg.data.num_clients
    hist = np.array([p.label_histogram for p in task.data.profiles], dtype=float)
    mix = hist / hist.sum(1, keepdims=True)
    counts = hist.sum(1)
    test_mix = np.bincount(test.labels, minlength=hist.shape[1]) / len(test)
    proxy_calls = [0]

    def proxy_loss(state: AdapterState) -> float:
        proxy_calls[0] += 1
        return scores(task, state, proxy)[0]

    aggregate: Callable | None = None
    if rule != "clustered":
        aggregate = strategy_from_config(ServerConfig(aggregator=rule), proxy_loss).aggregate
    globals_, assign = {0: init}, [0] * n_clients
    out: dict[str, list] = {"accuracy": [], "personal_accuracy": [], "round_s": [], "labels": []}
    for rnd in range(1, cfg.run.rounds + 1):
        start_t = time.perf_counter()
        states, starts, ns = [], [], []
        for cid in range(n_clients):
            start = globals_[assign[cid]]
            ins = instruction_for(cfg, rnd, cid)
            reply = pool.fit(ins, encode(start, {"round": rnd}))
            update = validate_reply(reply, start, ins, pool.num_examples(cid))
            states.append(update.state)
            starts.append(start)
            ns.append(float(update.num_examples))
        if aggregate is None:
            labels = cluster_updates(states, starts, k=2, seed=cfg.run.seed)
            assign = align_labels(labels, assign) if rnd > 1 else labels
            globals_ = clustered_fedavg(list(zip(states, ns, strict=True)), assign)
        else:
            globals_ = {0: aggregate(list(zip(states, ns, strict=True)))}
        per_class = {g: scores(task, s, test)[1] for g, s in globals_.items()}
        share = {g: sum(n for n, a in zip(counts, assign, strict=True) if a == g) for g in globals_}
        acc = sum(share[g] * float(per_class[g] @ test_mix) for g in globals_) / counts.sum()
        personal = sum(
            n * float(per_class[a] @ m) for n, a, m in zip(counts, assign, mix, strict=True)
        )
        out["accuracy"].append(round(acc, 4))
        out["personal_accuracy"].append(round(personal / counts.sum(), 4))
        out["round_s"].append(round(time.perf_counter() - start_t, 1))
        out["labels"].append(list(assign))
        print(rule, rnd, out["accuracy"][-1], out["personal_accuracy"][-1], flush=True)
    out["proxy_evaluations"] = proxy_calls[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--proxy", type=int, default=256, help="dev examples the server holds")
    ap.add_argument("--rules", default="fedavg,layerwise,clustered")
    args = ap.parse_args()
    cfg = load_config(overrides=["run.rounds=6", *args.sets])
    task = build_task(cfg)
    init = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}
    order = np.random.default_rng(cfg.run.seed).permutation(len(task.data.eval))
    held = task.data.eval
    proxy, test = subset(held, order[: args.proxy]), subset(held, order[args.proxy :])
    results = {"sets": args.sets, "proxy_examples": len(proxy), "test_examples": len(test)}
    for rule in args.rules.split(","):
        results[rule] = run_rule(rule, task, init, proxy, test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
