"""Central evaluation's wall time against its batch size, on one thread: every example of
the eval split, length-sorted batches (as ``fedpeft run`` evaluates), sizes interleaved over
``--repeats``; medians per size. Behind ``eval.batch_size``'s CPU default (issue 19).

    PYTHONPATH=src .venv/bin/python benchmarks/eval_batch.py --repeats 3 \
        --set "data.dataset='ag_news'" --set data.eval_size=1000
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from fedpeft.config import load_config  # noqa: E402
from fedpeft.server.evaluate import eval_order, predict_batches  # noqa: E402
from fedpeft.server.task import build_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="16,32,64,128")
    ap.add_argument("--set", action="append", default=[], help="config override")
    ap.add_argument("--out", help="write the medians here (JSON)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    task = build_task(load_config(overrides=["run.threads=1", *args.set]))
    torch.set_num_threads(1)
    split = task.data.eval
    predict_batches(task.model, split, eval_order(split, sizes[0])[:1], task.device)  # warm-up
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.repeats):
        for size in sizes:
            start = time.perf_counter()
            predict_batches(task.model, split, eval_order(split, size), task.device)
            times[size].append(time.perf_counter() - start)
        print(json.dumps({s: round(v[-1], 3) for s, v in times.items()}), flush=True)
    med = {s: statistics.median(v) for s, v in times.items()}
    out = {
        "overrides": args.set,
        "examples": len(split),
        "repeats": args.repeats,
        "load_avg": os.getloadavg(),
        "median_s": med,
        "speedup_vs_128": {s: med[128] / m for s, m in med.items()} if 128 in med else {},
    }
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
