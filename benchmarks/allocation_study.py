"""Allocation policies against the published baselines on model-relative tiers (issue 13).

Every run: 10 clients over tiers 30 % high / 40 % mid / 30 % low sized to the model
(``profiles.scale = "model"``), simulated devices (availability, memory, the 60 s deadline,
simulated time from the cost model), every client sampled each round, allocation on. One
setting (model × dataset) and split per invocation; each policy × seed is one
``fedpeft run`` in a fresh process, two at a time. Finished runs are kept in ``--out``
(JSON), so an interrupted study resumes where it stopped; ``--plot`` redraws the PNG of
accuracy against simulated time (mean over seeds, per policy).

    PYTHONPATH=src .venv/bin/python benchmarks/allocation_study.py \
        --setting minilm-sst2 --split natural --seeds 0 1 2 \
        --out benchmarks/results/allocation_study_minilm-sst2_natural.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import plot_against_clock, read_run, run_fedpeft

COMMON = [
    "data.num_clients=10",
    "profiles.scale='model'",
    "profiles.mix={high=0.3,mid=0.4,low=0.3}",
    "simulation.devices=true",
    "allocation.enabled=true",
    "allocation.deadline_s=60",
    "run.threads=1",
]
SETTINGS: dict[str, tuple[int, list[str]]] = {  # name → (blocks, overrides)
    "minilm-sst2": (
        6,
        ["data.dataset='sst2'", "model.max_length=48", "data.train_size=500"]
        + ["data.eval_size=200", "run.rounds=4"],
    ),
    "minilm-agnews": (
        6,
        ["data.dataset='ag_news'", "model.max_length=48", "data.train_size=500"]
        + ["data.eval_size=200", "run.rounds=4"],
    ),
    "smollm2-sst2": (
        30,
        ["model.name='HuggingFaceTB/SmolLM2-135M-Instruct'", "model.task='instruct'"]
        + ["data.dataset='sst2'", "model.max_length=32", "data.train_size=160"]
        + ["data.eval_size=64", "run.rounds=3", "client.batch_size=8", "client.lr=1e-3"]
        + ["eval.batch_size=32"],
    ),
}
SPLITS = {
    "natural": ["data.partition='natural'"],
    "dir01": ["data.partition='dirichlet'", "data.alpha=0.1"],
    "dir05": ["data.partition='dirichlet'", "data.alpha=0.5"],
    "iid": ["data.partition='iid'"],
}


def tiered_map(blocks: int) -> str:
    """A hand-written tier map: high r16 on every block, mid r8 on the top half, low r4 on
    the top ⌊0.2·L⌋ blocks (what each tier's memory holds)."""

    def lora(r: int, k: int) -> str:
        layers = "" if k == blocks else f",layers={list(range(blocks - k, blocks))}"
        return f"{{method='lora',options={{r={r},alpha={2 * r}{layers}}}}}"

    high, mid, low = lora(16, blocks), lora(8, blocks // 2), lora(4, max(1, int(0.2 * blocks)))
    return f"allocation.tiers={{high={high},mid={mid},low={low}}}"


def policies(blocks: int) -> dict[str, list[str]]:
    return {
        "utility": ["allocation.policy='utility'"],
        "uniform_fit": ["allocation.policy='uniform_fit'"],
        "uniform_large": ["allocation.policy='uniform_large'"],
        "tiered": ["allocation.policy='tiered'", tiered_map(blocks)],
        "hetlora": ["allocation.policy='hetlora'", "server.aggregator='hetlora'"],
        "flexlora": ["allocation.policy='flexlora'", "server.aggregator='exact_lora_svd'"],
        "fedra": ["allocation.policy='fedra'"],
        "unconstrained": ["allocation.policy='unconstrained'"],
    }


def client_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "clients.jsonl").read_text().splitlines()]


def participation(lines: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per tier: client-rounds sampled and each status (ok = trained)."""
    out: dict[str, dict[str, int]] = {}
    for c in lines:
        row = out.setdefault(c["tier"] or "?", {"sampled": 0})
        row["sampled"] += 1
        row[c["status"]] = row.get(c["status"], 0) + 1
    return out


def configs(lines: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in lines:
        if c["status"] == "ok":
            out[c["config"]] = out.get(c["config"], 0) + 1
    return dict(sorted(out.items()))


def summarise(run_dir: Path) -> dict[str, Any]:
    summary, rounds = read_run(run_dir)
    lines = client_lines(run_dir)
    steps = [c.get("metrics", {}).get("steps") for c in lines if c["status"] == "ok"]
    head = run_dir / "head_init.json"  # round 0: the head from the clients' statistics
    return {
        "round0_accuracy": (
            json.loads(head.read_text())["eval_after"].get("accuracy") if head.is_file() else None
        ),
        "accuracy": [r["eval"]["accuracy"] for r in rounds],
        "sim_clock_s": [r["sim_clock_s"] for r in rounds],
        "participation": participation(lines),
        "configs": configs(lines),
        "local_steps": sum(s for s in steps if s is not None),
        "bytes_up": summary["bytes_up_total"],
        "bytes_down": summary["bytes_down_total"],
        "wall_time_s": summary["wall_time_s"],
    }


def mean_curve(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    runs = [r for r in runs if "accuracy" in r]
    n = min(len(r["accuracy"]) for r in runs)
    clock = [statistics.mean(r["sim_clock_s"][i] for r in runs) for i in range(n)]
    return clock, [statistics.mean(r["accuracy"][i] for r in runs) for i in range(n)]


def plot(record: dict[str, Any], path: Path) -> None:
    curves = {
        p: mean_curve(list(seeds.values()))
        for p, seeds in record["runs"].items()
        if any("accuracy" in r for r in seeds.values())
    }
    title = f"{record['setting']}, {record['split']}: mean over seeds {record['seeds']}"
    plot_against_clock(curves, path, record.get("target") or 0.0, title)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--split", choices=sorted(SPLITS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policies", nargs="+", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", action="store_true", help="only redraw the PNG from --out")
    args = ap.parse_args()
    blocks, setting = SETTINGS[args.setting]
    variants = policies(blocks)
    chosen = args.policies or list(variants)
    base = [*COMMON, *setting, *SPLITS[args.split], *args.set]
    record: dict[str, Any] = {"setting": args.setting, "split": args.split, "base": base}
    if args.out.exists():
        record = json.loads(args.out.read_text())
    record |= {"seeds": sorted(set(record.get("seeds", [])) | set(args.seeds))}
    record.setdefault("runs", {})
    if args.plot:
        plot(record, args.out.with_suffix(".png"))
        return
    lock = threading.Lock()

    def done(policy: str, seed: int) -> bool:  # a run that failed is tried again
        return "accuracy" in record["runs"].get(policy, {}).get(str(seed), {})

    todo = [(p, s) for p in chosen for s in args.seeds if not done(p, s)]
    with tempfile.TemporaryDirectory() as tmp:

        def one(job: tuple[str, int]) -> None:
            policy, seed = job
            tag = f"{policy}-s{seed}"
            sets = [*base, *variants[policy], f"run.seed={seed}"]
            try:
                result = summarise(run_fedpeft(Path(tmp), tag, sets))
            except RuntimeError as e:
                result = {"error": str(e)}
            with lock:
                record["runs"].setdefault(policy, {})[str(seed)] = {
                    "sets": variants[policy]
                } | result
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(record, indent=1) + "\n")
            print(tag, json.dumps(result.get("accuracy", result)), flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, todo))
    plot(record, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
