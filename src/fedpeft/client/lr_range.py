"""A learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training Neural
Networks", WACV, §3.3): train for a few steps while the learning rate grows geometrically
from ``start`` to ``end``, ``η_k = start·(end/start)^{k/(K−1)}``, record the loss smoothed
by an exponential moving average (bias-corrected), stop once it exceeds 4× its minimum, and
choose ``η* = η_{argmin smoothed loss} / divisor`` (the "minimum over ten" rule of fastai's
``lr_find``), clipped to ``[low, high]``.

It runs on one client's data with that client's objective and optimiser (AdamW, the
label-skew loss) and restores the adapter afterwards. Written here because torch has no
range test and the libraries that do (fastai, pytorch-lightning) are not dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fedpeft.client.train import ClientData, client_objective, forward_inputs
from fedpeft.data import (
    Batch,
    DetectionBatch,
    ImageBatch,
    MatchBatch,
    OwnLossBatch,
    QABatch,
    VQABatch,
)
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.types import TrainInstruction


@dataclass(frozen=True)
class LrSearch:
    """What the range test tried, saw and chose (written to the run folder)."""

    lr: float
    lrs: list[float]
    losses: list[float]  # smoothed
    client_id: int
    rule: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RangeTest:
    start: float = 1e-5
    end: float = 1e-1
    steps: int = 40
    smoothing: float = 0.9
    divisor: float = 10.0
    low: float = 1e-4
    high: float = 3e-2

    def __post_init__(self) -> None:
        if not (0 < self.start < self.end and self.steps >= 2 and 0 <= self.smoothing < 1):
            raise ValueError("the range test needs 0 < start < end, steps ≥ 2, 0 ≤ smoothing < 1")
        if not (self.divisor >= 1 and 0 < self.low <= self.high):
            raise ValueError("the range test needs divisor ≥ 1 and 0 < low ≤ high")

    def schedule(self) -> list[float]:
        ratio = self.end / self.start
        return [self.start * ratio ** (k / (self.steps - 1)) for k in range(self.steps)]

    def choose(self, lrs: list[float], smoothed: list[float]) -> float:
        best = int(np.argmin(smoothed))
        return float(min(self.high, max(self.low, lrs[best] / self.divisor)))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average: ``m_k = β m_{k−1} + (1−β) ℓ_k``,
    reported as ``m_k / (1 − β^k)``."""
    out, m = [], 0.0
    for k, loss in enumerate(losses, start=1):
        m = beta * m + (1 - beta) * loss
        out.append(m / (1 - beta**k))
    return out


def lr_range_test(
    model: nn.Module,
    instruction: TrainInstruction,
    data: ClientData,
    device: torch.device,
    test: RangeTest | None = None,
) -> LrSearch:
    """Runs the range test from ``model``'s current adapter and puts that adapter back."""
    test = test or RangeTest()
    saved = get_adapter_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=test.start, weight_decay=instruction.weight_decay)
    objective = client_objective(instruction, data)
    rng = np.random.default_rng([instruction.seed, 0x1A7E])
    lrs, raw = test.schedule(), []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(instruction.seed)
        for lr, batch in zip(lrs, _cycle(data, instruction.batch_size, rng), strict=False):
            for group in opt.param_groups:
                group["lr"] = lr
            batch = batch.to(device)
            out = model(**forward_inputs(model, batch, with_labels=objective is None))
            if objective is None or isinstance(batch, OwnLossBatch):  # spans, pairs: own loss
                loss = out.loss
            else:
                loss = objective(out.logits, batch.labels)
            loss.backward()
            opt.step()
            model.zero_grad(set_to_none=True)
            raw.append(float(loss.detach()))
            if not _sane(smooth(raw, test.smoothing)):
                break
    set_adapter_state(model, saved)
    smoothed = smooth(raw, test.smoothing)
    lr = test.choose(lrs[: len(smoothed)], smoothed)
    return LrSearch(lr, lrs[: len(smoothed)], smoothed, instruction.client_id, "min/10")


def _cycle(
    data: ClientData, batch_size: int, rng: np.random.Generator
) -> Iterator[Batch | ImageBatch | QABatch | MatchBatch | VQABatch | DetectionBatch]:
    """Epoch after epoch of the client's batches."""
    while True:
        yield from data.split.train_batches(data.indices, batch_size, rng)


def _sane(smoothed: list[float]) -> bool:
    """False once the loss is not finite or has grown past 4× its minimum (diverged)."""
    last = smoothed[-1]
    return math.isfinite(last) and last <= 4 * min(smoothed)
