"""Evaluation of generative QA: the greedily generated answer against every reference.

``exact_match`` and ``f1`` are SQuAD's (``server.squad_metric``); ``rouge_l`` is the
ROUGE-L F-measure (Lin, 2004: LCS-based, ``F = (1+β²)·P·R / (R + β²·P)`` with β = 1 over
the longest common subsequence of the lowercased alphanumeric tokens), the best over a
question's references, from ``torchmetrics``. ``loss`` is the answer-token cross-entropy
of one teacher-forced pass (the training objective).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.text.rouge import ROUGEScore

from fedpeft.data.genqa import GenQASplit
from fedpeft.data.instruct import IGNORE
from fedpeft.server.generate import generate_answers
from fedpeft.server.squad_metric import squad_scores


def answer_loss(
    model: nn.Module, split: GenQASplit, batch_size: int, device: torch.device
) -> float:
    """Mean cross-entropy over the answer tokens (position t predicts token t + 1)."""
    loss_sum, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for _, batch in split.eval_batches(batch_size):
            batch = batch.to(device)
            logits = model(**batch.model_inputs(with_labels=False)).logits.float()
            logits = logits[:, -batch.input_ids.shape[1] :]  # drop soft-prompt positions
            target, step = batch.labels[:, 1:], logits[:, :-1]
            keep = target != IGNORE
            loss_sum += float(
                nn.functional.cross_entropy(step[keep], target[keep], reduction="sum")
            )
            tokens += int(keep.sum())
    return loss_sum / max(tokens, 1)


def evaluate_genqa(
    model: nn.Module, split: GenQASplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    """EM, F1 and ROUGE-L of the generated answers; ``accuracy`` is the exact match."""
    said = [text.strip() for text in generate_answers(model, split, batch_size, device)]
    refs = split.examples.answers
    scores = squad_scores(said, refs)
    rouge = ROUGEScore(rouge_keys="rougeL", accumulate="best")(said, [list(r) for r in refs])
    return scores | {
        "rouge_l": float(rouge["rougeL_fmeasure"]),
        "accuracy": scores["exact_match"],
        "loss": answer_loss(model, split, batch_size, device),
    }
