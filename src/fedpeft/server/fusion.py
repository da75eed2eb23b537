"""Heterogeneous PEFT fusion by knowledge distillation (ensemble distillation on a proxy set).

Clients that train different PEFT methods (LoRA, IA3, adapters…) cannot be averaged with each
other; each method keeps its own global module (FedAvg within the method's group). The server
then fuses them through their outputs, as FedDF does (Lin et al., 2020, NeurIPS): the teacher is
the ensemble of the per-method globals,

    ``p_T(x) = (1/M) Σ_m softmax(z_m(x) / T)``,

and each method's module is trained for a few steps on the server's proxy set to minimise

    ``L = α · CE(z_s, y) + (1 − α) · T² · KL(p_s ‖ p_T)``,   ``p_s = softmax(z_s / T)``.

The proposal writes ``KL(p_student ‖ p_teacher)`` (reverse, mode-seeking KL), which is the
default here; the usual choice (Hinton et al., 2015; FedDF) is the forward
``KL(p_teacher ‖ p_student)``, available as ``direction="teacher_student"``. ``T²`` keeps the
gradient's size independent of T (Hinton et al.). The proxy set is a few hundred examples the
server holds and no client trains on — a held-out slice of the train split or the dev split's
texts; it needs no labels: a batch without ``"labels"`` has ``L_task = 0``, so only the
``(1 − α)`` KL term trains it. With one method group the teacher is the student and the KL is
0 from the start: fusion is then plain FedAvg.

It lives with the server, not in ``aggregation`` (pure tensor maths), because it runs and
trains models. An aggregator asks for it by name (``register_aggregator(…, fuse="distill")``);
``FUSION_STEPS`` maps the names to the steps with their defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpeft.types import AdapterState

Direction = Literal["student_teacher", "teacher_student"]
ProxyBatch = Mapping[str, Tensor]  # "input_ids", "attention_mask", optional "labels"


def ensemble_probs(logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """The teacher: ``(1/M) Σ_m softmax(z_m / T)`` over the last dimension."""
    if not logits:
        raise ValueError("the ensemble needs at least one model's logits")
    _check_temperature(temperature)
    return torch.stack([F.softmax(z.float() / temperature, dim=-1) for z in logits]).mean(dim=0)


def kd_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    direction: Direction = "student_teacher",
) -> Tensor:
    """``α · CE(z_s, y) + (1 − α) · T² · KL``, batch-mean; ``CE = 0`` when ``labels`` is None.

    ``KL(p_s ‖ p_T) = Σ_k p_s,k (log p_s,k − log p_T,k)`` (the proposal's direction) or
    ``KL(p_T ‖ p_s)`` with ``direction="teacher_student"``.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` should be in [0, 1], got {alpha}.")
    _check_temperature(temperature)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = teacher_probs.float().clamp_min(1e-12).log()
    if direction == "student_teacher":
        kl = (log_s.exp() * (log_s - log_t)).sum(dim=-1)
    elif direction == "teacher_student":
        kl = (teacher_probs.float() * (log_t - log_s)).sum(dim=-1)
    else:
        raise ValueError(
            f"`direction` should be 'student_teacher' or 'teacher_student', got {direction!r}."
        )
    loss = (1 - alpha) * temperature**2 * kl.mean()
    if labels is not None and alpha > 0:
        loss = loss + alpha * F.cross_entropy(student_logits.float(), labels)
    return loss


def distill(
    models: Mapping[str, nn.Module],
    proxy_batches: Sequence[ProxyBatch],
    steps: int = 20,
    lr: float = 1e-3,
    alpha: float = 0.5,
    temperature: float = 2.0,
    direction: Direction = "student_teacher",
) -> dict[str, AdapterState]:
    """Each method's adapter distilled from the ensemble of all: name → new ``AdapterState``.

    The teacher's probabilities are computed once from the models as given. Each model then
    takes ``steps`` Adam steps (batches in order, cycling) on ``kd_loss``, updating only its
    trainable (adapter) parameters, in eval mode (no dropout, so the result is deterministic).
    The models are restored to their adapter state and mode afterwards: inputs are unchanged.
    Each model must own its trainable parameters (one model object per method group).
    """
    from fedpeft.peft.state import get_adapter_state, set_adapter_state  # PEFT loads lazily

    if steps < 1 or not lr > 0:
        raise ValueError(f"`steps` and `lr` should be positive, got {steps} and {lr}.")
    if not models or not proxy_batches:
        raise ValueError("distill needs at least one model and one proxy batch")
    teacher = [ensemble_probs(_logits_all(models, b), temperature) for b in proxy_batches]
    out: dict[str, AdapterState] = {}
    for name, model in models.items():
        saved, was_training = get_adapter_state(model), model.training
        try:
            _train_student(model, proxy_batches, teacher, steps, lr, alpha, temperature, direction)
            out[name] = {k: v.detach().cpu() for k, v in get_adapter_state(model).items()}
        finally:
            set_adapter_state(model, saved)
            model.train(was_training)
    return out


def teacher_kl(
    model: nn.Module,
    models: Mapping[str, nn.Module],
    proxy_batches: Sequence[ProxyBatch],
    temperature: float = 2.0,
    direction: Direction = "student_teacher",
) -> float:
    """The mean KL of ``model`` to the ensemble of ``models`` over the proxy batches (α = 0)."""
    total = 0.0
    for batch in proxy_batches:
        teacher = ensemble_probs(_logits_all(models, batch), temperature)
        (z,) = _logits_all({"student": model}, batch)
        total += float(kd_loss(z, teacher, None, 0.0, temperature, direction)) / temperature**2
    return total / len(proxy_batches)


def _train_student(
    model: nn.Module,
    batches: Sequence[ProxyBatch],
    teacher: list[Tensor],
    steps: int,
    lr: float,
    alpha: float,
    temperature: float,
    direction: Direction,
) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("a model to distil has no trainable (adapter) parameters")
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    for step in range(steps):
        i = step % len(batches)
        loss = kd_loss(
            _logits(model, batches[i]),
            teacher[i],
            batches[i].get("labels"),
            alpha,
            temperature,
            direction,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _logits_all(models: Mapping[str, nn.Module], batch: ProxyBatch) -> list[Tensor]:
    out = []
    for model in models.values():
        was_training = model.training
        with torch.inference_mode():
            out.append(_logits(model.eval(), batch).float())
        model.train(was_training)
    return out


def _logits(model: nn.Module, batch: ProxyBatch) -> Tensor:
    logits: Tensor = model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")
    ).logits
    return logits


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"`temperature` should be positive, got {temperature}.")


FUSION_STEPS: dict[str, Callable[..., dict[str, AdapterState]]] = {
    "distill": partial(distill, steps=20, lr=1e-3, alpha=0.5, temperature=2.0),
}
"""Server-side fusion steps an aggregator may name (``AggregatorParts.fuse``)."""
