"""How unrepresentative are the clients that train the deep blocks? (issue 13)

For each setting of the allocation study (model-relative tiers, MiniLM, AG News / SST-2,
natural and Dirichlet 0.1 splits, 500 / 1,000 train examples, seeds), the `utility`
policy's round-1 allocation over all ten clients (``fedpeft allocate``'s code path: no
training), and for each depth k the total-variation distance between the pooled label
histogram of the clients that train at least k blocks and the whole federation's. A depth
cap "train block k only if its trainers' labels look like everyone's" would bind where
this distance is large; the table shows whether that separates the settings `utility`
loses from those it wins.

    PYTHONPATH=src .venv/bin/python benchmarks/allocation_label_mix.py \\
        --out benchmarks/results/allocation_label_mix.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from allocation_study import COMMON, SETTINGS, SPLITS  # noqa: E402

from fedpeft.allocation.policies import label_distance  # noqa: E402
from fedpeft.cli.allocate import allocation_report  # noqa: E402
from fedpeft.config import load_config  # noqa: E402
from fedpeft.errors import FedpeftError  # noqa: E402
from fedpeft.server.task import build_data  # noqa: E402


def depth_of(chosen: dict[str, object] | None, blocks: int) -> int:
    if chosen is None:
        return 0
    options = chosen.get("options")
    layers = options.get("layers") if isinstance(options, dict) else None
    return len(layers) if isinstance(layers, list) else blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    rows = []
    for setting in ("minilm-agnews", "minilm-sst2"):
        blocks, overrides = SETTINGS[setting]
        for split, split_sets in SPLITS.items():
            for train in (500, 1000):
                for seed in args.seeds:
                    sets = [*COMMON, *overrides, *split_sets]
                    sets += [f"data.train_size={train}", f"run.seed={seed}"]
                    try:
                        cfg = load_config(None, sets)
                        _, record = allocation_report(cfg)
                        data = build_data(cfg)
                    except FedpeftError as e:  # e.g. no Dirichlet split of 500 examples
                        print(setting, split, train, seed, "skipped:", e)
                        continue
                    hists = [np.array(p.label_histogram, float) for p in data.profiles]
                    depths = [depth_of(c["chosen"], blocks) for c in record["clients"]]
                    everyone = np.sum(hists, axis=0)
                    by_depth = {}
                    for k in range(2, blocks + 1):
                        pool = [h for h, d in zip(hists, depths, strict=True) if d >= k]
                        if pool:
                            by_depth[k] = {
                                "clients": len(pool),
                                "tv": label_distance(list(np.sum(pool, 0)), list(everyone)),
                            }
                    row = {"setting": setting, "split": split, "train": train, "seed": seed}
                    rows.append(row | {"depths": depths, "by_depth": by_depth})
                    deepest = by_depth[max(by_depth)] if by_depth else None
                    print(setting, split, train, seed, depths, deepest, flush=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
