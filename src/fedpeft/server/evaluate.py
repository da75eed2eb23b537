"""Central evaluation of a global adapter: accuracy, macro-F1 and loss on the eval split.

Examples run in length-sorted batches (``eval_order``) under ``inference_mode``, so little
compute goes to padding; a runtime with idle cores can run contiguous shares of those
batches elsewhere (``split_shares``) and put the logits back together in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from fedpeft.data import Split
from fedpeft.data.detection import DetectionSplit
from fedpeft.data.genqa import GenQASplit
from fedpeft.data.instruct import InstructSplit
from fedpeft.data.paired import MatchSplit, VQASplit
from fedpeft.data.qa import QASplit
from fedpeft.data.tokenized import length_sorted_batches


def eval_batch_size(size: int | None, device: torch.device) -> int:
    """``eval.batch_size``, or by device when unset: 32 on the CPU (a batch of 128 was the
    slowest of 16–128 there, its activations out of the caches: BENCHMARKS issue 19), 128
    on CUDA."""
    return size if size is not None else (128 if device.type == "cuda" else 32)


def eval_order(split: Split, batch_size: int) -> list[np.ndarray]:
    """The evaluation batches (indices into the split): every example, sorted by length."""
    return list(length_sorted_batches(split.lengths, batch_size))


Advance = Callable[[int], None]
"""Told how many more examples are done, after each batch (a progress bar)."""


def predict_batches(
    model: nn.Module,
    split: Split,
    batches: Sequence[np.ndarray],
    device: torch.device,
    advance: Advance | None = None,
) -> torch.Tensor:
    """Logits (float32, CPU) of ``batches``' examples, one row per example in batch order."""
    model.eval()
    out = []
    with torch.inference_mode():
        for idx in batches:
            batch = split.collate(idx).to(device)
            out.append(model(**batch.model_inputs(with_labels=False)).logits.float().cpu())
            if advance is not None:
                advance(len(idx))
    assert out, "cannot evaluate an empty split"
    return torch.cat(out)


def predict_logits(
    model: nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    advance: Advance | None = None,
) -> torch.Tensor:
    """Logits (float32, CPU) for every example in the split's order."""
    batches = eval_order(split, batch_size)
    return in_split_order(predict_batches(model, split, batches, device, advance), batches)


def in_split_order(logits: torch.Tensor, batches: Sequence[np.ndarray]) -> torch.Tensor:
    """Rows in batch order (``predict_batches``) → rows in the split's order."""
    out = torch.empty_like(logits)
    out[torch.from_numpy(np.concatenate(batches))] = logits
    return out


def split_shares(
    batches: Sequence[np.ndarray], lengths: np.ndarray, shares: int
) -> list[tuple[int, int]]:
    """``batches`` cut into at most ``shares`` contiguous ranges ``[start, stop)`` of about
    equal cost (a batch costs its size × its longest example, as padded)."""
    costs = np.array([len(b) * int(lengths[b].max()) for b in batches], dtype=np.float64)
    bounds = np.searchsorted(np.cumsum(costs), costs.sum() * np.arange(1, shares) / shares)
    cuts = sorted({0, *(int(b) + 1 for b in bounds), len(batches)})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def classification_metrics(logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    preds = logits.argmax(-1).numpy()
    return {
        "accuracy": float((preds == labels).mean()),
        "macro_f1": float(f1_score(labels, preds, average="macro")),
        "loss": float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))),
    }


def evaluate_model(
    model: nn.Module, split: Split, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Accuracy, macro-F1 and loss; for instruction splits, of the generated label word;
    for question answering, image–text matching, VQA and detection, their own metrics (with
    ``accuracy`` and ``loss``)."""
    if isinstance(split, InstructSplit):
        from fedpeft.server.generate import evaluate_generative

        return evaluate_generative(model, split, batch_size, device)
    if isinstance(split, GenQASplit):
        from fedpeft.server.genqa import evaluate_genqa

        return evaluate_genqa(model, split, batch_size, device)
    if isinstance(split, QASplit):
        from fedpeft.server.qa import evaluate_qa

        return evaluate_qa(model, split, batch_size, device)
    if isinstance(split, MatchSplit):
        from fedpeft.server.itm import evaluate_itm

        return evaluate_itm(model, split, batch_size, device)
    if isinstance(split, VQASplit):
        from fedpeft.server.vqa import evaluate_vqa

        return evaluate_vqa(model, split, batch_size, device)
    if isinstance(split, DetectionSplit):
        from fedpeft.server.detection import evaluate_detection

        return evaluate_detection(model, split, batch_size, device)
    return classification_metrics(predict_logits(model, split, batch_size, device), split.labels)
