"""How well the round-0 LDA head is calibrated, offline, across datasets and train sizes.

The frozen MiniLM's features at the head input (what ``client/features.py`` sums) are taken
for ``--train`` examples and an eval subset; the LDA head (``aggregation/head_init.py``) is
built from their statistics on the first 200 / 500 / 2,000 of them (seed 0), and its eval
accuracy and cross-entropy are reported at the temperature the head chooses, at t = 1 (the
raw discriminant) and at the best of a grid of temperatures (an oracle that sees eval labels).

    PYTHONPATH=src .venv/bin/python benchmarks/head_calibration.py \
        --dataset sst2 --dataset trec --dataset ag_news --dataset banking77 \
        --dataset 20newsgroups --out benchmarks/results/accuracy/head_calibration.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedpeft.aggregation.head_init import STATS_COUNT, STATS_SECOND, STATS_SUM, lda_head
from fedpeft.client.features import head_module
from fedpeft.config import load_config
from fedpeft.data import load_dataset, tokenize_split
from fedpeft.models import get_model_spec, load_classifier, load_tokenizer

SIZES = (200, 500, 2000)
GRID = [2 ** (i / 2) for i in range(20)]


def features(model: torch.nn.Module, split: object) -> tuple[torch.Tensor, torch.Tensor]:
    captured: list[torch.Tensor] = []
    hook = head_module(model).register_forward_pre_hook(
        lambda _m, a: captured.append(a[0].detach().reshape(a[0].shape[0], -1))
    )
    out = []
    with torch.inference_mode():
        for start in range(0, len(split.labels), 64):  # type: ignore[attr-defined]
            idx = np.arange(start, min(start + 64, len(split.labels)))  # type: ignore[attr-defined]
            model(**split.collate(idx).model_inputs(with_labels=False))  # type: ignore[attr-defined]
            out.append(captured[-1].double())
    hook.remove()
    return torch.cat(out), torch.as_tensor(np.asarray(split.labels))  # type: ignore[attr-defined]


def stats(x: torch.Tensor, y: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    sums = torch.zeros(classes, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    return {
        STATS_SUM: sums,
        STATS_COUNT: torch.bincount(y, minlength=classes).double(),
        STATS_SECOND: x.T @ x,
    }


def score(z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float((z.argmax(1) == y).double().mean()), float(F.cross_entropy(z, y))


def study(dataset: str, train: int) -> list[dict[str, object]]:
    cfg = load_config(
        overrides=[f"data.dataset='{dataset}'", f"data.train_size={train}", "data.eval_size=1000"]
    )
    ds = load_dataset(cfg.data, 0)
    spec = get_model_spec(cfg.model.name)
    tok, classes = load_tokenizer(spec), len(ds.label_names)
    model = load_classifier(spec, classes, 0).eval()
    x_tr, y_tr = features(model, tokenize_split(ds.train, tok, cfg.model.max_length))
    x_ev, y_ev = features(model, tokenize_split(ds.eval, tok, cfg.model.max_length))
    rows = []
    blank = {
        "classifier.weight": torch.zeros(classes, x_tr.shape[1]),
        "classifier.bias": torch.zeros(classes),
    }
    for n in SIZES:
        idx = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))[:n]
        head = lda_head(blank, stats(x_tr[idx], y_tr[idx], classes))
        w, b = head["classifier.weight"].double(), head["classifier.bias"].double()
        z = x_ev @ w.T + b
        acc, loss = score(z, y_ev)
        raw = lda_head(blank, stats(x_tr[idx], y_tr[idx], classes), calibrate=False)
        raw_acc, raw_loss = score(
            x_ev @ raw["classifier.weight"].double().T + raw["classifier.bias"].double(), y_ev
        )
        oracle = min(
            float(F.cross_entropy(z * (1 / t), y_ev)) for t in [*GRID, *(1 / g for g in GRID)]
        )
        rows.append(
            {
                "dataset": dataset,
                "train": n,
                "classes": classes,
                "accuracy": acc,
                "eval_loss": loss,
                "raw_accuracy": raw_acc,
                "raw_eval_loss": raw_loss,
                "oracle_temperature_loss": oracle,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [r for d in args.dataset for r in study(d, max(SIZES))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
