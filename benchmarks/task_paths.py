"""Code-path rows for the tasks whose pretrained weights do not ship offline (issue 20):
object detection (YOLOS on BCCD), visual question answering (ViLT on DAQUAR) and image–text
matching (CLIP on CIFAR-10 captions), each on its tiny random config, federated against
centralised (``data.num_clients=1``, the same examples and epochs). The metric of a random
tiny model says nothing about the task; what the rows show is that every task runs end to
end through the same loop with its metric every round, and what a round costs (bytes,
time, memory) at that size.

    PYTHONPATH=src .venv/bin/python benchmarks/task_paths.py \
        --out benchmarks/results/task_paths.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import read_run, run_fedpeft

COMMON = ["run.rounds=3", "run.threads=1", "run.workers=1", "run.seed=0"]
TASKS: dict[str, tuple[str, list[str]]] = {  # name → (metric, overrides)
    "detect (tiny-yolos, BCCD)": (
        "map_50",
        [
            "model.name='tiny-yolos'",
            "model.task='detect'",
            "data.dataset='bccd'",
            "data.train_size=96",
            "data.eval_size=32",
            "data.num_clients=4",
            "data.partition='dirichlet'",
            "data.alpha=0.5",
            "peft.method='lora'",
            "client.batch_size=8",
            "client.lr=1e-3",
        ],
    ),
    "vqa (tiny-vilt, DAQUAR)": (
        "accuracy",
        [
            "model.name='tiny-vilt'",
            "model.task='vqa'",
            "data.dataset='daquar'",
            "data.num_clients=4",
            "data.partition='natural'",
            "peft.method='lora'",
            "client.batch_size=16",
            "client.lr=1e-3",
        ],
    ),
    "itm (tiny-clip, CIFAR-10 captions)": (
        "accuracy",  # the mean of the two directions' recall@1
        [
            "model.name='tiny-clip'",
            "model.task='itm'",
            "data.dataset='cifar10'",
            "data.train_size=400",
            "data.eval_size=100",
            "data.num_clients=4",
            "data.partition='dirichlet'",
            "data.alpha=0.5",
            "peft.method='lora'",
            "client.batch_size=32",
            "client.lr=1e-3",
        ],
    ),
}


def one(out: Path, tag: str, sets: list[str], metric: str) -> dict[str, Any]:
    summary, rounds = read_run(run_fedpeft(out, tag, sets))
    return {
        "metric": metric,
        "per_round": [r["eval"].get(metric) for r in rounds],
        "final_eval": rounds[-1]["eval"],
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "median_round_s": sorted(r["wall_time_s"] for r in rounds)[len(rounds) // 2],
        "peak_rss_mib": summary["peak_rss_bytes"] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (metric, sets) in TASKS.items():
            tag = "".join(ch if ch.isalnum() else "-" for ch in name)[:20]
            for arm, extra in (("federated", []), ("centralised", ["data.num_clients=1"])):
                try:
                    row = one(Path(tmp), f"{tag}-{arm}", [*COMMON, *sets, *extra], metric)
                except RuntimeError as e:
                    row = {"error": str(e)}
                results[f"{name} / {arm}"] = row
                print(name, arm, json.dumps(row), flush=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
