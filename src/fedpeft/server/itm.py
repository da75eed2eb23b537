"""Evaluation of image–text matching: retrieval recall@k in both directions.

Every distinct eval image is scored against every distinct eval text by the cosine of
their CLIP embeddings. Image → text recall@k is the share of images with a true text (one
they are paired with) among their k best-scored texts; text → image recall@k the share of
texts with a true image among their k best (the usual definition for COCO and Flickr30k,
where an image has several true captions). A true item's rank counts the false items
scored at least as high, so ties count against the model. ``accuracy`` — what the round
loop, summary and allocation follow — is the mean of the two recalls@1; ``loss`` is the
contrastive loss over the eval pairs in batches of ``eval.batch_size``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedpeft.data.paired import MatchSplit
from fedpeft.models.clip import matching_loss

RECALL_AT = (1, 5)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of queries (rows with a true item) whose best true item ranks within the
    first ``k``: fewer than ``k`` false items score at least as high."""
    rows = relevant.any(axis=1)
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    rank = ((scores >= best) & ~relevant).sum(axis=1)
    return float((rank[rows] < k).mean()) if rows.any() else 0.0


def embed(
    model: nn.Module, split: MatchSplit, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(image embeddings, text embeddings, exp(t)) of the split's distinct images and texts."""
    images, texts = [], []
    scale = 1.0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(split.images), batch_size):
            rows = np.arange(start, min(start + batch_size, len(split.images)))
            out = model(pixel_values=split.pixels(rows).to(device))
            images.append(out.image_embeds.float().cpu())
            scale = float(out.logit_scale)
        for start in range(0, len(split.input_ids), batch_size):
            ids, mask = split.tokens(
                np.arange(start, min(start + batch_size, len(split.input_ids)))
            )
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            texts.append(out.text_embeds.float().cpu())
    return torch.cat(images), torch.cat(texts), scale


def evaluate_itm(
    model: nn.Module, split: MatchSplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    image, text, scale = embed(model, split, batch_size, device)
    scores = (image @ text.t()).numpy()
    relevant = split.relevance()
    metrics = {}
    for k in RECALL_AT:
        metrics[f"i2t_recall@{k}"] = recall_at_k(scores, relevant, k)
        metrics[f"t2i_recall@{k}"] = recall_at_k(scores.T, relevant.T, k)
    loss_sum = 0.0
    for idx, _ in split.eval_batches(batch_size):
        rows, image_col = np.unique(split.image[idx], return_inverse=True)
        texts, text_col = np.unique(split.text[idx], return_inverse=True)
        match = torch.zeros(len(rows), len(texts))
        match[torch.from_numpy(image_col), torch.from_numpy(text_col)] = 1.0
        logits = scale * image[torch.from_numpy(rows)] @ text[torch.from_numpy(texts)].t()
        loss_sum += float(matching_loss(logits, match)) * len(idx)
    accuracy = (metrics["i2t_recall@1"] + metrics["t2i_recall@1"]) / 2
    return metrics | {"accuracy": accuracy, "loss": loss_sum / len(split)}
