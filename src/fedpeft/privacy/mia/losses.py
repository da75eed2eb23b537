"""Per-example losses of a model on a split: what every membership attack reads.

Classification: ``ℓ(x, y) = −log softmax(f(x))_y``. Instruction splits (token labels,
``-100`` outside the answer): the mean next-token loss over the answer tokens, the loss
the model was trained on, per example.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpeft.data import OwnLossBatch, Split
from fedpeft.errors import FedpeftError

IGNORE = -100


def example_losses(
    model: nn.Module,
    split: Split,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Loss of each example ``split[indices]`` (float64, in the order of ``indices``),
    batched in length order under ``inference_mode``."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty(len(indices), dtype=np.float64)
    order = np.argsort(split.lengths[indices], kind="stable")
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = split.collate(indices[rows]).to(device)
            if isinstance(batch, OwnLossBatch):  # spans, pairs: no per-example label loss
                raise FedpeftError("membership audits score classification runs only.")
            logits = model(**batch.model_inputs(with_labels=False)).logits.float()
            out[rows] = _losses(logits, batch.labels).cpu().double().numpy()
    return out


def _losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.ndim == 1:
        return F.cross_entropy(logits, labels, reduction="none")
    shifted, target = logits[:, :-1], labels[:, 1:]
    tokens = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).reshape(target.shape)
    valid = (target != IGNORE).float()
    return (tokens * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
