"""Privacy–utility of PEFT methods under client-level DP, with membership-inference audits
(issue 17): accuracy, ε, attack AUC and TPR at 1% FPR, without DP and with central
DP-FedAvg at two ε.

The federation is ``fedpeft.cli.audit_train.federation``: the run's IID client partitions,
client sampling and local training (``client.train``), then FedAvg or DP-FedAvg
(``privacy.dp_fedavg``), the same DP-FedAvg the round loop's central mode runs
(``PrivacyLedger.aggregate``); the replay was written before the loop had DP and keeps the
figures in BENCHMARKS.md reproducible. σ comes from
``privacy.target_epsilon`` for the planned rounds (opacus RDP, q = 1: every client every
round). The clip norm S of a method is the median client update norm of its non-DP run's
first round (a data-dependent choice that is itself not accounted for, as is usual in the
literature). The audit is ``fedpeft.cli.audit.audit_state``: 500 members (clients'
examples) vs 500 held-out train examples, plus two clients' next updates.

    .venv/bin/python benchmarks/privacy_utility.py --methods lora --seeds 0 1 2 \\
        --out benchmarks/results/privacy_utility_lora.json
    .venv/bin/python benchmarks/privacy_utility.py --report \\
        benchmarks/results/privacy_utility_lora.json ...   # mean ± std over the seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedpeft.cli.audit import AuditOptions, audit_state, heldout_examples
from fedpeft.cli.audit_train import RunPrivacy, federation, run_privacy
from fedpeft.config import ExperimentConfig, load_config
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.privacy import Accountant
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.task import Task, build_task

LR = {"lora": 3e-3, "ia3": 1e-2, "bitfit": 3e-3, "full": 5e-5}
BASE = [
    "data.train_size=1000",
    "data.eval_size=400",
    "data.num_clients=20",
    "data.partition='iid'",
    "run.rounds=8",
    "run.threads=1",  # a shared machine: one thread does not spin-wait for a busy core
]


def one_setting(
    task: Task, cfg: ExperimentConfig, privacy: RunPrivacy, held: Any, init: Any
) -> tuple[dict[str, Any], list[list[float]]]:
    start = time.perf_counter()
    fed = federation(task, cfg, privacy, task.data.train, task.data.partitions, init, cfg.run.seed)
    set_adapter_state(task.model, fed.state)
    metrics = evaluate_model(task.model, task.data.eval, task.eval_batch_size, task.device)
    targets = audit_state(task, held, init, fed.state, AuditOptions(max_examples=500, clients=2))
    row: dict[str, Any] = {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "mode": privacy.mode,
        "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm if privacy.mode != "none" else None,
        "median_update_norm_round1": statistics.median(fed.norms[0]),
        "audit": {t: {a: r.to_json() for a, r in at.items()} for t, at in targets.items()},
        "wall_s": time.perf_counter() - start,
    }
    if privacy.mode == "central":
        acc = Accountant(cfg.privacy.accountant)
        acc.step(privacy.noise_multiplier, 1.0, cfg.run.rounds)
        row["epsilon"] = acc.epsilon(cfg.privacy.delta)
    return row, fed.norms


def run_method(
    method: str, epsilons: list[float], clip: float | None, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """The non-DP run (skipped when ``clip`` is given: S from an earlier non-DP run), then
    central DP at each ε. ``seed`` (``run.seed``) draws the train subset, the partitions,
    the initial adapter, the local shuffles and the DP noise."""
    sets = [*BASE, f"peft.method='{method}'", f"client.lr={LR[method]}", f"run.seed={seed}"]
    cfg = load_config(overrides=sets)
    held = heldout_examples(cfg)
    task = build_task(cfg)
    init = get_adapter_state(task.model)
    if clip is None:
        plain, norms = one_setting(task, cfg, RunPrivacy("none"), held, init)
        yield plain | {"method": method, "target_epsilon": None, "seed": seed}
        clip = statistics.median(norms[0])
    for eps in epsilons:
        dp_cfg = load_config(
            overrides=[
                *sets,
                "privacy.mode='central'",
                f"privacy.target_epsilon={eps}",
                f"privacy.clip_norm={clip}",
            ]
        )
        privacy = run_privacy(dp_cfg, [len(p) for p in task.data.partitions])
        row, _ = one_setting(task, dp_cfg, privacy, held, init)
        yield row | {"method": method, "target_epsilon": eps, "seed": seed}


def _stat(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "—"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(paths: list[Path]) -> None:
    """The Markdown table over every row in ``paths``: a cell per method and target ε,
    mean ± std over the seeds it ran (rows from before ``--seeds`` existed are seed 0)."""
    cells: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            cells.setdefault((row["method"], row["target_epsilon"]), []).append(row)
    print(
        "| method | DP | seeds | accuracy | macro-F1 | global AUC (loss) | global AUC (vs round 0) "
        "| global TPR@1%FPR | clients' next update, AUC (loss) |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    order = sorted(cells, key=lambda c: (list(LR).index(c[0]), -(c[1] or 1e9)))  # ∞ first
    for method, eps in order:
        rows = cells[(method, eps)]
        glob = [r["audit"]["global"] for r in rows]
        clients = [a["loss"]["auc"] for r in rows for t, a in r["audit"].items() if t != "global"]
        seeds = sorted(r.get("seed", 0) for r in rows)
        print(
            f"| {method} | {'none' if eps is None else f'central, ε = {eps:g}'} "
            f"| {', '.join(map(str, seeds))} | {_stat([r['accuracy'] for r in rows])} "
            f"| {_stat([r['macro_f1'] for r in rows])} "
            f"| {_stat([g['loss']['auc'] for g in glob])} "
            f"| {_stat([g['reference_round0']['auc'] for g in glob])} "
            f"| {_stat([g['loss']['tpr_at_0.01_fpr'] for g in glob])} | {_stat(clients)} |"
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", nargs="+", type=Path, help="print the table of these results")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--methods", nargs="+", default=list(LR))
    ap.add_argument("--epsilons", nargs="*", type=float, default=[8.0, 2.0])
    ap.add_argument("--clip", type=float, help="S from an earlier non-DP run (skips it)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="run.seed of each repeat")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if args.out is None:
        ap.error("--out is required (or --report FILE ...)")
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            for row in run_method(method, args.epsilons, args.clip, seed):
                g = row["audit"]["global"]
                print(
                    f"{method} seed {seed} ε={row.get('epsilon', '∞')}: "
                    f"acc {row['accuracy']:.3f}, AUC loss {g['loss']['auc']:.3f} / "
                    f"ref {g['reference_round0']['auc']:.3f}, "
                    f"TPR@1% {g['loss']['tpr_at_0.01_fpr']:.3f} ({row['wall_s']:.0f} s)",
                    flush=True,
                )
                rows.append(row)
                save(args.out, rows)  # after every cell: a long study keeps what it measured


def save(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setup": BASE, "lr": LR, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
