"""Evaluation of visual question answering: exact-answer accuracy.

The predicted answer is the head's best-scored one; it is right when it is the reference
answer exactly (DAQUAR has one per question). A reference outside the train answers can
never be predicted and counts as wrong in ``accuracy``; ``accuracy_in_vocabulary`` is the
accuracy over the questions whose answer the head has. ``loss``: ViLT's VQA loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedpeft.data.paired import VQASplit


def evaluate_vqa(
    model: nn.Module, split: VQASplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    preds = np.empty(len(split), dtype=np.int64)
    loss_sum = 0.0
    model.eval()
    with torch.inference_mode():
        for idx, batch in split.eval_batches(batch_size):
            out = model(**batch.to(device).model_inputs())
            loss_sum += float(out.loss) * len(idx)
            preds[idx] = out.logits.argmax(-1).cpu().numpy()
    right = preds == split.labels
    known = split.labels >= 0
    return {
        "accuracy": float(right.mean()),
        "accuracy_in_vocabulary": float(right[known].mean()) if known.any() else 0.0,
        "loss": loss_sum / len(split),
    }
