"""Generative evaluation of an instruction-tuned causal LM: does it *say* the label word?

For every prompt the model decodes greedily (``argmax`` at each step) for as many tokens
as the longest answer plus one; the text is normalised (lowercase, punctuation dropped,
whitespace collapsed) and matches a class when it equals that class's label word or
starts with it followed by a space. Anything else is *invalid* — wrong for accuracy,
and a miss of its true class for macro-F1 (averaged over the real classes only).

Two cheaper numbers come from one teacher-forced pass over prompt + true answer: the
answer-token loss (the training objective) and label-scoring accuracy, the argmax over
the classes of the probability of each label word's *first* token (a restricted choice,
reported apart from the generative exact match).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from transformers import GenerationConfig

from fedpeft.data.genqa import GenQASplit
from fedpeft.data.instruct import IGNORE, InstructSplit
from fedpeft.errors import FedpeftError

INVALID = -1  # the "class" of an answer that names no label
_PUNCT = re.compile(r"[.,;:!?\"'()\[\]]")


def normalise(text: str) -> str:
    """Lowercase, punctuation dropped (``/`` and ``-`` kept: "Sci/Tech"), spaces collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def parse_answer(text: str, label_names: list[str]) -> int:
    """The class whose label word the text is (or starts with), else ``INVALID``."""
    said = normalise(text)
    names = sorted(enumerate(map(normalise, label_names)), key=lambda x: -len(x[1]))
    for cls, name in names:
        if name and (said == name or said.startswith(name + " ")):
            return cls
    return INVALID


def check_label_words(label_names: list[str], source: str) -> None:
    """Refuses classes that ``parse_answer`` could never tell apart or never match: a label
    with no word left after normalisation, or two labels that normalise alike."""
    seen: dict[str, str] = {}
    for name in label_names:
        key = normalise(name)
        if not key:
            raise FedpeftError(
                f"label {name!r} of {source} is only punctuation, which a generated answer "
                "is scored without, so it could never be right; name the class with a word."
            )
        if key in seen:
            raise FedpeftError(
                f"labels {seen[key]!r} and {name!r} of {source} read the same once lowercased "
                "and without punctuation, as generated answers are scored, so one of them "
                "could never be right; spell them as one class or rename one."
            )
        seen[key] = name


def generate_answers(
    model: nn.Module,
    split: InstructSplit | GenQASplit,
    batch_size: int,
    device: torch.device,
    advance: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of every prompt (split order), decoded without special tokens;
    ``advance`` is told how many more are done after each batch (a progress bar).

    Batches are length-sorted and left-padded, so the new tokens start in one column.
    """
    config = GenerationConfig(
        max_new_tokens=max(len(a) for a in split.answers) + 1,
        do_sample=False,
        eos_token_id=split.stop_id,
        pad_token_id=split.pad_id,
    )
    out: list[str] = [""] * len(split)
    order = np.argsort([len(p) for p in split.prompts], kind="stable")
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = split.collate_prompts(idx).to(device)
            ids = model.generate(  # type: ignore[operator]
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=config,
            )
            new = ids[:, batch.input_ids.shape[1] :].cpu()
            texts = split.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                out[int(i)] = text
            if advance is not None:
                advance(len(idx))
    return out


def teacher_forced(
    model: nn.Module, split: InstructSplit, batch_size: int, device: torch.device
) -> tuple[float, np.ndarray]:
    """(mean answer-token cross-entropy, label-scoring prediction per example)."""
    firsts = torch.tensor([int(a[0]) for a in split.answers])
    preds = np.empty(len(split), dtype=np.int64)
    loss_sum, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for idx, batch in split.eval_batches(batch_size):
            batch = batch.to(device)
            logits = model(**batch.model_inputs(with_labels=False)).logits.float()
            logits = logits[:, -batch.input_ids.shape[1] :]  # drop soft-prompt positions
            target = batch.labels[:, 1:]
            step = logits[:, :-1]  # position t predicts token t+1
            keep = target != IGNORE
            loss_sum += float(
                nn.functional.cross_entropy(step[keep], target[keep], reduction="sum")
            )
            tokens += int(keep.sum())
            first = keep.int().argmax(-1)  # where each row's answer starts (minus one)
            rows = torch.arange(len(idx), device=logits.device)
            scores = step[rows, first][:, firsts.to(logits.device)]
            preds[idx] = scores.argmax(-1).cpu().numpy()
    return loss_sum / max(tokens, 1), preds


def evaluate_generative(
    model: nn.Module, split: InstructSplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Exact-match accuracy and macro-F1 of the generated label word, answer-token loss,
    the share of invalid answers and label-scoring accuracy."""
    texts = generate_answers(model, split, batch_size, device)
    preds = np.asarray([parse_answer(t, split.label_names) for t in texts], dtype=np.int64)
    loss, scored = teacher_forced(model, split, batch_size, device)
    return answer_metrics(preds, split.labels, len(split.label_names)) | {
        "loss": loss,
        "label_scoring_accuracy": float((scored == split.labels).mean()),
    }


def answer_metrics(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 over the ``num_classes`` real classes (an ``INVALID`` answer is
    a false negative of its true class and nobody's false positive), invalid share."""
    classes = list(range(num_classes))
    return {
        "accuracy": float((preds == labels).mean()),
        "macro_f1": float(
            f1_score(labels, preds, labels=classes, average="macro", zero_division=0)
        ),
        "invalid_rate": float((preds == INVALID).mean()),
    }
