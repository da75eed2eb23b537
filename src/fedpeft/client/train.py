"""Local training, framework-free: ``train(model, instruction, data) → ClientUpdate``.

Only the PEFT parameters train; the base model stays frozen. With ``proximal_mu > 0``
the loss gains FedProx's ``(μ/2)·‖θ − θ⁰‖²`` (Li et al., 2020), θ⁰ the received state.
With ``dpsgd`` set, steps are sample-level DP-SGD (``fedpeft.privacy.dpsgd``, opacus).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import torch
from torch import nn

from fedpeft.client.losses import LabelSkewLoss, Loss
from fedpeft.data import ImageSplit, OwnLossBatch, Split, TokenizedSplit
from fedpeft.data.instruct import IGNORE
from fedpeft.peft import get_adapter_state
from fedpeft.types import ClientUpdate, TrainInstruction

if TYPE_CHECKING:
    from fedpeft.privacy.dpsgd import DpSgd, PrivateTraining


@dataclass(frozen=True)
class ClientData:
    """A client's examples: indices into a split tokenised once and shared."""

    split: Split
    indices: np.ndarray


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from (run seed, round, client, …), the same in every process."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train(
    model: nn.Module,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    dpsgd: DpSgd | None = None,
    after_backward: Callable[[], None] | None = None,
) -> ClientUpdate:
    """Trains ``model``'s adapter in place from its current state and returns the update.

    ``after_backward`` runs after every backward pass, before the optimiser step (it may
    change the gradients: SCAFFOLD's correction, ``client/scaffold.py``)."""
    params = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not any(part in n for part in instruction.freeze)
    ]
    anchor = [p.detach().clone() for p in params] if instruction.proximal_mu > 0 else []
    opt = torch.optim.AdamW(
        _param_groups(model, params, instruction), weight_decay=instruction.weight_decay
    )
    seed = derive_seed(instruction.seed, instruction.round, instruction.client_id)
    rng = np.random.default_rng(seed)
    private = _private(model, opt, dpsgd, data, instruction, seed, anchor, device)
    opt = private.optimizer if private else opt
    meter = _PeakMemory(device)
    loss_sum, seen, steps = 0.0, 0, 0
    objective = client_objective(instruction, data)
    max_steps = instruction.steps or instruction.epochs * _batches(len(data.indices), instruction)
    cpu_clock = _cpu_clock()
    start, cpu_start = time.perf_counter(), cpu_clock()
    model.train()
    # dropout draws from a per-(round, client) stream; a failing private run drops its hooks
    with torch.random.fork_rng(devices=[]), private or nullcontext():
        torch.manual_seed(seed)
        while steps < max_steps:
            batches = (
                private.batches(data.split, data.indices, rng)
                if private
                else data.split.train_batches(data.indices, instruction.batch_size, rng)
            )
            for batch in batches:
                batch = batch.to(device)
                out = model(**forward_inputs(model, batch, with_labels=objective is None))
                task_loss = (
                    out.loss
                    if objective is None
                    or isinstance(batch, OwnLossBatch)  # spans, pairs: own loss
                    else objective(out.logits, batch.labels)
                )
                loss = task_loss + _proximal(params, anchor, instruction.proximal_mu)
                loss.backward()
                if after_backward is not None:
                    after_backward()
                opt.step()
                model.zero_grad(set_to_none=True)  # also frozen-by-instruction grads
                loss_sum += float(task_loss.detach()) * len(batch)
                seen += len(batch)
                steps += 1
                meter.sample()
                if steps >= max_steps:
                    break
    metrics = {
        "loss": loss_sum / max(seen, 1),
        "steps": float(steps),
        "train_time_s": time.perf_counter() - start,
        "peak_mem_bytes": float(meter.peak),  # process RSS (CPU) / allocated (CUDA) peak
        "mem_rise_bytes": float(meter.peak - meter.start),  # this client's training alone
    }
    if device.type == "cpu":  # on an accelerator the host's CPU seconds are not its work
        metrics["train_cpu_s"] = cpu_clock() - cpu_start
    if private:
        metrics |= private.close()
    return ClientUpdate(instruction.client_id, get_adapter_state(model), len(data.indices), metrics)


def _cpu_clock() -> Callable[[], float]:
    """The clock of the CPU seconds spent training, which unlike wall time do not grow when
    other work shares the cores: this thread's where torch computes on it alone (one
    intra-op thread, also each of the local runtime's parallel clients), else the
    process's (its intra-op threads too). Chosen once, so both readings use the same one."""
    return time.thread_time if torch.get_num_threads() == 1 else time.process_time


def _private(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    dpsgd: DpSgd | None,
    data: ClientData,
    instruction: TrainInstruction,
    seed: int,
    anchor: list[torch.Tensor],
    device: torch.device,
) -> PrivateTraining | None:
    if dpsgd is None:
        return None
    from fedpeft.privacy.dpsgd import PrivateTraining

    n, mu = len(data.indices), instruction.proximal_mu
    private = PrivateTraining(model, opt, dpsgd, n, instruction.batch_size, seed, (anchor, mu))
    private.probe(data.split, data.indices, device)
    return private


# the task heads of every supported family (peft/arch*.py; YOLOS: its class and box MLPs;
# CenterNet: its pyramid and branches)
HEAD_MODULES = (
    "classifier",
    "score",
    "class_labels_classifier",
    "bbox_predictor",
    "detection_head",
)


def _param_groups(
    model: nn.Module, params: list[nn.Parameter], instruction: TrainInstruction
) -> list[dict[str, object]]:
    """One AdamW group at ``lr``, or two when ``head_lr`` sets the task head's apart."""
    if instruction.head_lr is None:
        return [{"params": params, "lr": instruction.lr}]
    ids = {id(p) for n, p in model.named_parameters() if set(n.split(".")) & set(HEAD_MODULES)}
    head = [p for p in params if id(p) in ids]
    rest = [p for p in params if id(p) not in ids]
    return [{"params": rest, "lr": instruction.lr}, {"params": head, "lr": instruction.head_lr}]


def forward_inputs(model: nn.Module, batch: Any, with_labels: bool = True) -> dict[str, Any]:
    """The training forward's keyword arguments. A causal LM's batch — token labels, left
    padded, so every row's answer sits at its end — asks the model for the logits of the
    last ``k`` positions only (``logits_to_keep``, ``k`` = from the position before the
    earliest answer token to the end) with its labels cut to the same ``k``: the targets and
    so the loss are unchanged, while the ``B × T × vocabulary`` logits and their gradient
    shrink to ``B × k × vocabulary`` (SmolLM2, 8 SQuAD questions of 240 tokens: peak memory
    of a step 6.08 → 3.85 GB, BENCHMARKS). Prompt tuning prepends its own virtual-token
    labels to whatever it gets, so its inputs stay whole (prefix tuning's keys and values
    add no positions: it is cut like the rest)."""
    inputs: dict[str, Any] = batch.model_inputs(with_labels=with_labels)
    labels = inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or not _keeps_logits(model):
        return inputs
    answer = (labels != IGNORE).any(dim=0)
    if not bool(answer.any()):
        return inputs
    keep = labels.shape[1] - int(answer.int().argmax()) + 1
    if keep >= labels.shape[1]:
        return inputs
    return inputs | {"labels": labels[:, -keep:], "logits_to_keep": keep}


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model computes only the last positions' logits when asked (a
    ``transformers`` causal LM, directly or under a PEFT wrapper other than prompt tuning)."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning and config.peft_type != "PREFIX_TUNING":
        return False  # prompt tuning: virtual tokens before the text, their labels prepended
    unwrap = getattr(model, "get_base_model", None)
    base: nn.Module = unwrap() if callable(unwrap) else model
    return _forward_takes_logits_to_keep(type(base).forward)


@cache
def _forward_takes_logits_to_keep(forward: Callable[..., Any]) -> bool:
    """Read once per model class's ``forward``, not on every training step."""
    return "logits_to_keep" in inspect.signature(forward).parameters


def client_objective(instruction: TrainInstruction, data: ClientData) -> Loss | None:
    """The label-skew loss from the client's own label counts (classification only)."""
    rule = LabelSkewLoss(instruction.label_skew, instruction.label_skew_tau)
    if not rule.active or not isinstance(data.split, TokenizedSplit | ImageSplit):
        return None  # generated words and answer spans have no class logits
    return rule.for_client(data.split.labels[data.indices])


def _batches(n: int, instruction: TrainInstruction) -> int:
    return max(1, -(-n // instruction.batch_size))


def _proximal(
    params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    if mu <= 0:
        return torch.zeros((), device=params[0].device)
    total = torch.zeros((), device=params[0].device)
    for p, a in zip(params, anchor, strict=True):
        total = total + ((p - a) ** 2).sum()
    return 0.5 * mu * total


class _PeakMemory:
    """Peak process RSS on CPU, peak allocated memory on CUDA, sampled once per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.process = psutil.Process()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.peak = 0
        self.sample()
        self.start = self.peak

    def sample(self) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = max(self.peak, self.process.memory_info().rss)
