"""Question answering as a run's task: what it supports, its splits, and the evaluation of
extractive QA — the answer span read off every window of a question, scored by SQuAD's
exact match and F1. On a decoder (LLaMA family) QA is generative instead: the model writes
the answer (``data.genqa``, scored in ``server.genqa``).

A window's span score is ``s(i, j) = start_logit[i] + end_logit[j]`` over context tokens
``i ≤ j < i + L`` (``L = MAX_ANSWER_TOKENS``, as Hugging Face's ``run_qa``); a question's
answer is the context text under the best span of all its windows. Where ``run_qa`` searches
the 20 best starts × 20 best ends, this takes the exact maximum over every valid pair.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from fedpeft.config import ExperimentConfig
from fedpeft.data import RawDataset
from fedpeft.data.checks import warn_once
from fedpeft.data.genqa import GenQASplit, hidden_answer_warning, tokenize_genqa
from fedpeft.data.qa import QASplit, tokenize_qa
from fedpeft.data.questions import QAExamples
from fedpeft.errors import FedpeftError
from fedpeft.models import ModelSpec, load_tokenizer
from fedpeft.peft import methods_for
from fedpeft.server.squad_metric import squad_scores

log = logging.getLogger("fedpeft.server")
QA_DATASETS = ("squad",)
QA_FAMILIES = ("bert", "roberta")  # encoders with a span head (``*ForQuestionAnswering``)
GENERATIVE_FAMILIES = ("llama",)  # decoders that write the answer (``data.genqa``)
MAX_ANSWER_TOKENS = 30


def supported_qa() -> str:
    return (
        f"qa: {', '.join(QA_FAMILIES)} encoders (extractive) with "
        f"{', '.join(methods_for('qa'))}, or {', '.join(GENERATIVE_FAMILIES)} decoders "
        f"(generative) with {', '.join(methods_for('instruct'))}"
    )


def generative(spec: ModelSpec) -> bool:
    """Whether QA on this model generates the answer (a decoder) or extracts a span."""
    return spec.family in GENERATIVE_FAMILIES


def check_qa(cfg: ExperimentConfig, spec: ModelSpec) -> None:
    """Refuses, before anything loads, what QA does not support on this model."""
    if cfg.data.dataset not in QA_DATASETS:
        raise FedpeftError(
            f"`model.task` 'qa' needs question-answering data, but `data.dataset` is "
            f"{cfg.data.dataset!r}; use one of: {', '.join(QA_DATASETS)} (SQuAD-format "
            "JSON of your own goes in `data.train_file`)."
        )
    if spec.family not in (*QA_FAMILIES, *GENERATIVE_FAMILIES, "auto"):
        raise FedpeftError(
            f"`model.task` 'qa' needs a text encoder or decoder, but `{spec.name}` is a "
            f"{spec.family} model; supported: {supported_qa()}."
        )
    allowed = methods_for("instruct" if generative(spec) else "qa")
    if cfg.peft.method not in allowed:
        raise FedpeftError(
            f"`peft.method` {cfg.peft.method!r} is not offered for `model.task` 'qa' "
            f"(an extractive span head needs unshifted positions; a causal LM has no small "
            f"head); supported: {supported_qa()}."
        )
    check_catalogue(cfg, allowed, "qa", supported_qa())
    if cfg.data.partition not in ("iid", "natural"):
        raise FedpeftError(
            f"`data.partition` {cfg.data.partition!r} skews classes, which question answering "
            "has none of; use 'natural' (whole articles per client) or 'iid'."
        )


def check_catalogue(cfg: ExperimentConfig, allowed: list[str], kind: str, supported: str) -> None:
    """With the allocation on, every candidate method must be offered for ``kind``."""
    if not cfg.allocation.enabled:
        return
    cat = cfg.allocation.catalogue
    named = {*cat.others, *(c.method for c in cat.extra)} | (
        {"prompt"} if cat.prompt_tokens else set()
    )
    bad = sorted(named - set(allowed))
    if bad:
        raise FedpeftError(
            f"the allocation's catalogue offers {bad}, which `model.task` {kind!r} does not "
            "support; remove them (`allocation.catalogue.prompt_tokens = []` for prompt "
            f"tuning); supported: {supported}."
        )


def qa_splits(
    cfg: ExperimentConfig, dataset: RawDataset, spec: ModelSpec
) -> tuple[QASplit, QASplit] | tuple[GenQASplit, GenQASplit]:
    """Train and eval windows (extractive) or prompts (generative), tokenised once."""
    if not isinstance(dataset.train, QAExamples) or not isinstance(dataset.eval, QAExamples):
        raise FedpeftError(
            f"dataset {dataset.name!r} holds no questions; `model.task` 'qa' needs them."
        )
    tokenizer = load_tokenizer(spec)
    length = cfg.model.max_length
    if generative(spec):
        warn_once(log, hidden_answer_warning(dataset.train, tokenizer, length))
        return (
            tokenize_genqa(dataset.train, tokenizer, length),
            tokenize_genqa(dataset.eval, tokenizer, length),
        )
    stride = cfg.model.doc_stride or length // 4
    return (
        tokenize_qa(dataset.train, tokenizer, length, stride),
        tokenize_qa(dataset.eval, tokenizer, length, stride),
    )


def best_span(start: np.ndarray, end: np.ndarray, offsets: np.ndarray) -> tuple[float, int, int]:
    """(score, first token, last token) of the window's best context span, or
    (-inf, -1, -1) when it has no context tokens."""
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if len(ctx) == 0:
        return float("-inf"), -1, -1
    scores = start[ctx][:, None] + end[ctx][None, :]
    gap = ctx[None, :] - ctx[:, None]  # token distance j − i (contexts are contiguous)
    scores = np.where((gap >= 0) & (gap < MAX_ANSWER_TOKENS), scores, -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[i, j]), int(ctx[i]), int(ctx[j])


def extract_answers(split: QASplit, starts: list[np.ndarray], ends: list[np.ndarray]) -> list[str]:
    """Each question's answer text: its windows' best span, the best of them."""
    best: list[tuple[float, str]] = [(float("-inf"), "")] * len(split.examples)
    for f, q in enumerate(split.example):
        score, i, j = best_span(starts[f], ends[f], split.offsets[f])
        if score > best[q][0]:
            off = split.offsets[f]
            best[q] = (score, split.examples.contexts[q][off[i, 0] : off[j, 1]])
    return [text for _, text in best]


def evaluate_qa(
    model: nn.Module, split: QASplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    """SQuAD exact match and F1 of the extracted answers (``accuracy`` is the exact match,
    the number the round loop and reports follow), and the span loss over the windows."""
    starts: list[np.ndarray] = [np.empty(0)] * len(split)
    ends: list[np.ndarray] = [np.empty(0)] * len(split)
    loss_sum = 0.0
    model.eval()
    with torch.inference_mode():
        for idx, batch in split.eval_batches(batch_size):
            out = model(**batch.to(device).model_inputs())
            loss_sum += float(out.loss) * len(idx)
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for row, f in enumerate(idx):
                n = int(split.lengths[f])
                starts[int(f)], ends[int(f)] = s[row, :n], e[row, :n]
    answers = extract_answers(split, starts, ends)
    scores = squad_scores(answers, split.examples.answers)
    return scores | {"accuracy": scores["exact_match"], "loss": loss_sum / max(len(split), 1)}
