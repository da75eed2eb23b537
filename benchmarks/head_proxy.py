"""A cheap proxy for the federated-vs-centralised search: the classifier head alone, on
features of the frozen all-MiniLM-L6-v2 computed once per dataset.

The head sees exactly what fedpeft's head sees (the BERT pooler output, dropout 0.1 in
training), on the same seeded train subset, the same Flower Dirichlet partition, the same
local loop (AdamW, batch 16, one epoch a round, fedpeft's label-skew losses) and fedpeft's
own aggregation and server optimisers. Without LoRA the problem is convex, so it isolates
what label skew and per-round progress cost, in seconds per run instead of half an hour.
Findings must be confirmed on real LoRA runs (``sweep.py``, ``fed_vs_central.py``).

    PYTHONPATH=src .venv/bin/python benchmarks/head_proxy.py \
        --out benchmarks/results/accuracy/head_proxy.json --dataset banking77 --alpha 0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedpeft.aggregation import fedavg
from fedpeft.aggregation.drift import fedexp, fednova, server_control, zeros_like_state
from fedpeft.aggregation.server_opt import FedAdam, FedAvgM, ServerOptimizer
from fedpeft.client.losses import LabelSkewLoss
from fedpeft.client.scaffold import corrected_gradient
from fedpeft.config import load_config
from fedpeft.data import load_dataset, partition_indices, tokenize_split
from fedpeft.models import get_model_spec, load_classifier, load_tokenizer

CACHE = Path("runs/head_proxy_cache")


def features(dataset: str, seed: int, eval_size: int | None) -> dict[str, np.ndarray]:
    """Pooled features and labels of the seeded train subset (2,000) and the eval split."""
    path = CACHE / f"{dataset}_s{seed}_e{eval_size}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return dict(f)
    sets = [f"data.dataset='{dataset}'"] + ([f"data.eval_size={eval_size}"] if eval_size else [])
    cfg = load_config(overrides=sets)
    ds = load_dataset(cfg.data, seed)
    spec = get_model_spec(cfg.model.name)
    tok = load_tokenizer(spec)
    model = load_classifier(spec, ds.num_labels, seed).eval()
    out = {"names": np.asarray(ds.label_names)}
    for part, raw in (("train", ds.train), ("eval", ds.eval)):
        split = tokenize_split(raw, tok, cfg.model.max_length)
        feats = np.zeros((len(split), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(split), 64):
                idx = np.arange(start, min(start + 64, len(split)))
                b = split.collate(idx)
                pooled = model.bert(input_ids=b.input_ids, attention_mask=b.attention_mask)[1]
                feats[idx] = pooled.numpy()
        out[f"{part}_x"], out[f"{part}_y"] = feats, split.labels
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


@dataclass(frozen=True)
class Setting:
    lr: float = 3e-3
    label_skew: str = "none"
    tau: float = 1.0
    optimizer: str = "none"
    server_lr: float | None = None
    momentum: float = 0.9
    batch_size: int = 16
    epochs: int = 1
    steps: int | None = None  # a fixed step budget per client and round instead of epochs
    scaffold: bool = False
    fednova: bool = False
    rounds: int | None = None  # None: --rounds (compare rounds × epochs at equal compute)
    fedexp: bool = False


def server_opt(s: Setting) -> ServerOptimizer | None:
    lr = {} if s.server_lr is None else {"server_lr": s.server_lr}
    if s.optimizer == "fedavgm":
        return FedAvgM(momentum=s.momentum, **lr)
    if s.optimizer == "fedadam":
        return FedAdam(**lr)
    return None


def local(head, x, y, s: Setting, gen, rng, controls=None):  # type: ignore[no-untyped-def]
    """One client's local work of AdamW on the head (dropout 0.1 on features, as BERT's
    head); with ``controls = (c, c_i)`` SCAFFOLD's corrected gradients, returning c_i⁺."""
    w = {k: v.clone().requires_grad_(True) for k, v in head.items()}
    opt = torch.optim.AdamW(list(w.values()), lr=s.lr, weight_decay=0.0)
    loss_fn = LabelSkewLoss(s.label_skew, s.tau).for_client(y.numpy())
    budget = s.steps or s.epochs * -(-len(y) // s.batch_size)
    sums = {k: torch.zeros_like(v) for k, v in head.items()}
    steps = 0
    while steps < budget:
        order = rng.permutation(len(y))
        for i in range(0, len(y), s.batch_size):
            idx = torch.from_numpy(order[i : i + s.batch_size])
            h = x[idx]
            mask = (torch.rand(h.shape, generator=gen) > 0.1).float() / 0.9  # dropout 0.1
            logits = (h * mask) @ w["w"].T + w["b"]
            loss_fn(logits, y[idx]).backward()
            if controls is not None:
                c, ci = controls
                for k, v in w.items():
                    assert v.grad is not None
                    sums[k] += v.grad
                    v.grad.copy_(corrected_gradient(v.grad, c[k], ci[k]))
            opt.step()
            opt.zero_grad()
            steps += 1
            if steps >= budget:
                break
    new_ci = {k: v / max(steps, 1) for k, v in sums.items()}
    return {k: v.detach() for k, v in w.items()}, steps, new_ci


def evaluate(head, x, y) -> tuple[float, float, np.ndarray]:  # type: ignore[no-untyped-def]
    from sklearn.metrics import f1_score, recall_score

    pred = (x @ head["w"].T + head["b"]).argmax(-1).numpy()
    recall = recall_score(y, pred, labels=range(head["b"].numel()), average=None, zero_division=0)
    return float((pred == y.numpy()).mean()), float(f1_score(y, pred, average="macro")), recall


def simulate(
    data: dict[str, np.ndarray], s: Setting, clients: int, alpha: float, seed: int, rounds: int
) -> dict[str, object]:
    x, y = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
    ex, ey = torch.from_numpy(data["eval_x"]), torch.from_numpy(data["eval_y"])
    c = len(data["names"])
    cfg = load_config(overrides=[f"data.num_clients={clients}", f"data.alpha={alpha}"]).data
    parts = partition_indices(data["train_y"], cfg, seed) if clients > 1 else [np.arange(len(y))]
    gen = torch.Generator().manual_seed(seed)
    head = {"w": torch.randn(c, x.shape[1], generator=gen) * 0.02, "b": torch.zeros(c)}
    opt, opt_state = server_opt(s), {}
    c_server = zeros_like_state(head)
    c_local = [zeros_like_state(head) for _ in parts]
    accs, f1s = [], []
    for rnd in range(rounds):
        updates, deltas = [], []
        for cid, p in enumerate(parts):
            rng = np.random.default_rng([seed, rnd, cid])
            controls = (c_server, c_local[cid]) if s.scaffold else None
            state, steps, new_ci = local(head, x[p], y[p], s, gen, rng, controls)
            updates.append((state, float(len(p)), float(steps)))
            if s.scaffold:
                deltas.append({k: new_ci[k] - c_local[cid][k] for k in new_ci})
                c_local[cid] = new_ci
        if s.scaffold:
            c_server = server_control(c_server, deltas, len(parts))
        agg = fednova(head, updates) if s.fednova else fedavg([(u, n) for u, n, _ in updates])
        if s.fedexp:
            agg = fedexp(head, [(u, n) for u, n, _ in updates])
        head, opt_state = opt(head, agg, opt_state) if opt else (agg, {})
        acc, f1, recall = evaluate(head, ex, ey)
        accs.append(acc)
        f1s.append(f1)
    counts = np.bincount(data["train_y"], minlength=c)
    rare = np.argsort(counts, kind="stable")[:3]
    return {
        "accuracy": accs,
        "macro_f1": f1s,
        "rare_recall": [float(recall[i]) for i in rare],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--alpha", action="append", type=float, default=[])
    ap.add_argument("--seed", action="append", type=int, default=[])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--grid", default="default", help="which settings to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[str, object] = {}
    for dataset, seed in itertools.product(args.dataset, args.seed or [0]):
        data = features(dataset, seed, 2000 if dataset in ("ag_news", "20newsgroups") else None)
        central = max(
            (simulate(data, Setting(lr=lr), 1, 1.0, seed, args.rounds) for lr in (3e-3, 1e-2)),
            key=lambda r: r["accuracy"][-1],  # type: ignore[index]
        )  # the better of two learning rates: the reference is not handicapped
        results[f"{dataset}/central/s{seed}"] = central
        print(dataset, seed, "central", round(central["accuracy"][-1], 3), flush=True)  # type: ignore[index]
        for alpha in args.alpha or [0.5]:
            for name, s in GRIDS[args.grid].items():
                r = simulate(data, s, 10, alpha, seed, s.rounds or args.rounds)
                results[f"{dataset}/dir{alpha}/s{seed}/{name}"] = r
                acc = r["accuracy"][-1]  # type: ignore[index]
                print(dataset, alpha, seed, name, round(acc, 3), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    summarise(results)


def summarise(results: dict[str, object]) -> None:
    """Mean final accuracy gap to central per setting, over datasets, alphas and seeds."""
    gaps: dict[str, list[float]] = {}
    for key, r in results.items():
        parts = key.split("/")
        if len(parts) != 4:
            continue
        central = results[f"{parts[0]}/central/{parts[2]}"]
        gap = central["accuracy"][-1] - r["accuracy"][-1]  # type: ignore[index]
        gaps.setdefault(parts[3], []).append(gap)
    for name, g in sorted(gaps.items(), key=lambda kv: statistics.mean(kv[1])):
        print(f"{name:40s} mean gap {statistics.mean(g):+.3f}  worst {max(g):+.3f}")


GRIDS: dict[str, dict[str, Setting]] = {
    "wide": {
        "fedavg": Setting(),
        "fedavg lr1e-2": Setting(lr=1e-2),
        "la": Setting(label_skew="logit_adjust"),
        "la t0.5": Setting(label_skew="logit_adjust", tau=0.5),
        "la t0 (restricted)": Setting(label_skew="logit_adjust", tau=0.0),
        "fedlc t1": Setting(label_skew="fedlc"),
        "fedlc t5": Setting(label_skew="fedlc", tau=5.0),
        "fedrs a0.1": Setting(label_skew="fedrs", tau=0.1),
        "la lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust"),
        "la lr3e-2": Setting(lr=3e-2, label_skew="logit_adjust"),
        "la avgm.9": Setting(optimizer="fedavgm", label_skew="logit_adjust"),
        "la avgm.9 lr1e-2": Setting(lr=1e-2, optimizer="fedavgm", label_skew="logit_adjust"),
        "la slr3": Setting(
            optimizer="fedavgm", momentum=0.0, server_lr=3.0, label_skew="logit_adjust"
        ),
        "la adam3e-2": Setting(optimizer="fedadam", server_lr=3e-2, label_skew="logit_adjust"),
        "la bs8": Setting(batch_size=8, label_skew="logit_adjust"),
        "la scaffold": Setting(label_skew="logit_adjust", scaffold=True),
        "la fednova": Setting(label_skew="logit_adjust", fednova=True),
        "la steps13": Setting(label_skew="logit_adjust", steps=13),
        "la steps13 avgm.9": Setting(label_skew="logit_adjust", steps=13, optimizer="fedavgm"),
    },
    "wide2": {
        "fedavg": Setting(),
        "fedavg lr1e-2": Setting(lr=1e-2),
        "la": Setting(label_skew="logit_adjust"),
        "fedlc t5": Setting(label_skew="fedlc", tau=5.0),
        "la lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust"),
        "la lr3e-2": Setting(lr=3e-2, label_skew="logit_adjust"),
        "la avgm.9": Setting(optimizer="fedavgm", label_skew="logit_adjust"),
        "la avgm.9 lr1e-2": Setting(lr=1e-2, optimizer="fedavgm", label_skew="logit_adjust"),
        "la scaffold": Setting(label_skew="logit_adjust", scaffold=True),
        "la scaffold lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust", scaffold=True),
        "la fedexp": Setting(label_skew="logit_adjust", fedexp=True),
        "la fedexp lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust", fedexp=True),
        "avgm.9 lr1e-2 (no la)": Setting(lr=1e-2, optimizer="fedavgm"),
    },
    "budget": {  # 12 epochs of compute in every setting
        "la lr1e-2 avgm.9": Setting(lr=1e-2, label_skew="logit_adjust", optimizer="fedavgm"),
        "la lr1e-2 avgm.7": Setting(
            lr=1e-2, label_skew="logit_adjust", optimizer="fedavgm", momentum=0.7
        ),
        "la lr1e-2 avgm.5": Setting(
            lr=1e-2, label_skew="logit_adjust", optimizer="fedavgm", momentum=0.5
        ),
        "la lr1e-2 slr2": Setting(
            lr=1e-2, label_skew="logit_adjust", optimizer="fedavgm", momentum=0.0, server_lr=2.0
        ),
        "la lr1e-2 6x2": Setting(lr=1e-2, label_skew="logit_adjust", epochs=2, rounds=6),
        "la lr1e-2 4x3": Setting(lr=1e-2, label_skew="logit_adjust", epochs=3, rounds=4),
        "la lr1e-2 6x2 avgm.5": Setting(
            lr=1e-2,
            label_skew="logit_adjust",
            epochs=2,
            rounds=6,
            optimizer="fedavgm",
            momentum=0.5,
        ),
        "la lr3e-3 6x2": Setting(label_skew="logit_adjust", epochs=2, rounds=6),
        "la lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust"),
        "la fedexp": Setting(label_skew="logit_adjust", fedexp=True),
        "la lr1e-2 fedexp": Setting(lr=1e-2, label_skew="logit_adjust", fedexp=True),
    },
    "default": {
        "fedavg": Setting(),
        "fedavg+la": Setting(label_skew="logit_adjust"),
        "fedavg+fedlc": Setting(label_skew="fedlc"),
        "fedavg+fedrs.5": Setting(label_skew="fedrs", tau=0.5),
        "fedavgm": Setting(optimizer="fedavgm"),
        "fedavgm+la": Setting(optimizer="fedavgm", label_skew="logit_adjust"),
        "fedadam": Setting(optimizer="fedadam"),
        "fedadam+la": Setting(optimizer="fedadam", label_skew="logit_adjust"),
        "fedavg lr1e-2": Setting(lr=1e-2),
        "fedavg+la lr1e-2": Setting(lr=1e-2, label_skew="logit_adjust"),
        "fedavgm+la lr1e-2": Setting(lr=1e-2, optimizer="fedavgm", label_skew="logit_adjust"),
    },
}


if __name__ == "__main__":
    main()
