"""Central evaluation of a global adapter: accuracy, macro-F1 and loss on the eval split."""

from __future__ import annotations

import torch
from sklearn.metrics import f1_score
from torch import nn

from fedpeft.data import Split
from fedpeft.data.genqa import GenQASplit
from fedpeft.data.instruct import InstructSplit
from fedpeft.data.qa import QASplit


def predict_logits(
    model: nn.Module, split: Split, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits (float32, CPU) for every example in the split's order.

    Runs in length buckets under ``inference_mode``, so little compute goes to padding.
    """
    model.eval()
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for idx, batch in split.eval_batches(batch_size):
            batch = batch.to(device)
            logits = model(**batch.model_inputs(with_labels=False)).logits
            if out is None:
                out = torch.empty((len(split), logits.shape[-1]), dtype=torch.float32)
            out[torch.from_numpy(idx)] = logits.float().cpu()
    assert out is not None, "cannot evaluate an empty split"
    return out


def evaluate_model(
    model: nn.Module, split: Split, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Accuracy, macro-F1 and loss; for instruction splits, of the generated label word."""
    if isinstance(split, InstructSplit):
        from fedpeft.server.generate import evaluate_generative

        return evaluate_generative(model, split, batch_size, device)
    if isinstance(split, GenQASplit):
        from fedpeft.server.genqa import evaluate_genqa

        return evaluate_genqa(model, split, batch_size, device)
    if isinstance(split, QASplit):
        from fedpeft.server.qa import evaluate_qa

        return evaluate_qa(model, split, batch_size, device)
    logits = predict_logits(model, split, batch_size, device)
    labels = torch.from_numpy(split.labels)
    preds = logits.argmax(-1).numpy()
    return {
        "accuracy": float((preds == split.labels).mean()),
        "macro_f1": float(f1_score(split.labels, preds, average="macro")),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
    }
