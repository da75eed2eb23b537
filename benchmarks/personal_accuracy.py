"""Personal accuracy of finished runs: what each client gets on its own label mix.

For every run folder, each client's model (the global adapter; in a ``clustered`` run the
global of the client's cluster) is scored on the dev split with every class re-weighted
to the client's label histogram, so the score is the accuracy the client would see on
dev data drawn like its own. The run's value is the example-weighted mean over clients.

    PYTHONPATH=src .venv/bin/python benchmarks/personal_accuracy.py \
        --sweep benchmarks/results/aggregators_agnews_dir01.json

adds ``personal_accuracy`` to every variant of the sweep's JSON whose run folder is kept
(``sweep.py --runs``). Reads the run's own ``config.toml``, ``partitions.json``, final
checkpoint (cluster labels) and exported adapters; nothing is retrained.
``rescored_main_accuracy`` re-scores the exported main adapter: it must equal the run's
logged final accuracy, or the export is not what was evaluated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedpeft.config import load_config
from fedpeft.peft.io import load_adapter
from fedpeft.server import RunStore
from fedpeft.server.evaluate import eval_batch_size, predict_logits
from fedpeft.server.state import cluster_group
from fedpeft.server.task import build_data, load_base


def class_recall(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Per-class recall; a class absent from dev gets 0 (it cannot be scored)."""
    out = np.zeros(num_labels)
    for y in range(num_labels):
        mask = labels == y
        if mask.any():
            out[y] = float((preds[mask] == y).mean())
    return out


def personal_accuracy(run_dir: Path) -> dict[str, float]:
    cfg = load_config(run_dir / "config.toml")
    data = build_data(cfg)
    clients = json.loads((run_dir / "partitions.json").read_text())["clients"]
    clusters = RunStore.open_existing(run_dir).load_checkpoint().clusters
    labels, k = data.eval.labels, data.dataset.num_labels
    recalls: dict[str, np.ndarray] = {}
    plain: dict[str, float] = {}

    def recall_of(folder: Path) -> np.ndarray:
        key = str(folder)
        if key not in recalls:
            model = load_adapter(load_base(cfg, data.spec, data.dataset), folder)
            cpu = torch.device("cpu")
            size = eval_batch_size(cfg.eval.batch_size, cpu)
            logits = predict_logits(model, data.eval, size, cpu)
            preds = logits.argmax(-1).numpy()
            recalls[key] = class_recall(preds, labels, k)
            plain[key] = float((preds == labels).mean())
        return recalls[key]

    total, weighted = 0, 0.0
    for cid, info in clients.items():
        hist = np.asarray(info["label_histogram"], dtype=float)
        label = clusters.get(int(cid))
        folder = run_dir / "adapter"
        if label is not None:
            folder = run_dir / "adapters" / cluster_group(int(label))
        weighted += float(hist @ recall_of(folder))  # = n_c · Σ_y p_c(y) recall(y)
        total += int(hist.sum())
    recall_of(run_dir / "adapter")  # the main group's export: must re-score as it was logged
    return {
        "personal_accuracy": round(weighted / total, 4),
        "rescored_main_accuracy": round(plain[str(run_dir / "adapter")], 4),
        "models_scored": len(recalls),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", type=Path, action="append", required=True)
    args = ap.parse_args()
    for path in args.sweep:
        results = json.loads(path.read_text())
        for label, r in results.items():
            if "run" in r and Path(r["run"]).is_dir():
                r.update(personal_accuracy(Path(r["run"])))
                print(path.name, label, r["personal_accuracy"], flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
