"""A client's class feature statistics: for every class c, the sum of the features the task
head receives, ``s_c = Σ_{(x, y=c)} h(x)``, the count ``n_c``, and the second moment
``Σ_x h(x) h(x)ᵀ`` — what the server needs to start the head at the nearest-class-mean or
the linear-discriminant rule (``aggregation/head_init.py``). Sums, never examples.

``h(x)`` is the input of the model's classification head (e.g. BERT's pooled output),
read by a forward hook in evaluation mode (no dropout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpeft.client.train import ClientData
from fedpeft.data import OwnLossBatch
from fedpeft.errors import FedpeftError

HEAD_MODULES = ("classifier", "score")  # classifier heads: what the statistics feed
STATS_SUM = "feature_stats/sum"  # (C, H) float64: Σ h per class
STATS_COUNT = "feature_stats/count"  # (C,) float64: n per class
STATS_SECOND = "feature_stats/second"  # (H, H) float64: Σ h hᵀ over every example


def head_module(model: nn.Module) -> nn.Module:
    """The model's task head (its last module named like one in ``HEAD_MODULES``)."""
    found = [m for name, m in model.named_modules() if name.split(".")[-1] in HEAD_MODULES]
    if not found:
        raise FedpeftError(
            f"the model has no task head named {' or '.join(HEAD_MODULES)}; feature statistics "
            "need a classifier."
        )
    return found[0]


def num_classes(state: dict[str, torch.Tensor]) -> int:
    """The number of classes of the head in an adapter state (its weight's rows)."""
    rows = [
        v.shape[0]
        for k, v in state.items()
        if k.endswith(".weight") and set(k.split(".")) & set(HEAD_MODULES)
    ]
    if len(rows) != 1:
        raise FedpeftError("the adapter state has no single classifier weight to size classes by.")
    return int(rows[0])


def stats_layout(
    served: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], second: bool = True
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors a statistics reply to a payload holding ``served`` carries (what a
    transport checks before decoding): ``(C, H)``, ``(C,)`` and (unless ``second`` is
    False: class means only) ``(H, H)`` in float64, from the served head's ``(C, H)``
    weight."""
    heads = [
        shape
        for k, (_, shape) in served.items()
        if k.endswith(".weight") and set(k.split(".")) & set(HEAD_MODULES)
    ]
    if len(heads) != 1 or len(heads[0]) != 2:
        raise FedpeftError(
            "the served adapter has no single classifier weight to size statistics by."
        )
    c, h = heads[0]
    f64 = torch.float64
    out = {STATS_SUM: (f64, (c, h)), STATS_COUNT: (f64, (c,))}
    return out | ({STATS_SECOND: (f64, (h, h))} if second else {})


def class_feature_stats(
    model: nn.Module,
    data: ClientData,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    second: bool = True,
) -> dict[str, torch.Tensor]:
    """``{STATS_SUM: s (C, H), STATS_COUNT: n (C,), STATS_SECOND: Σ h hᵀ (H, H)}`` over the
    client's examples (``second=False``: without the second moment)."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(args[0].shape[0], -1).double())

    handle = head_module(model).register_forward_pre_hook(grab)
    sums: torch.Tensor | None = None
    moment: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    indices = np.asarray(data.indices)
    lengths = getattr(data.split, "lengths", None)
    if lengths is not None:  # shortest first: less padding; the sums do not depend on order
        indices = indices[np.argsort(np.asarray(lengths)[indices], kind="stable")]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(indices), batch_size):
                idx = indices[start : start + batch_size]
                batch = data.split.collate(idx).to(device)
                if isinstance(batch, OwnLossBatch):  # spans and pairs: no class features
                    raise ValueError("question-answering or image–text data has no class features")
                captured.clear()
                model(**batch.model_inputs(with_labels=False))
                feats = captured[-1].cpu()
                labels = batch.labels.cpu()
                if sums is None or moment is None:
                    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64)
                    size = feats.shape[1] if second else 0
                    moment = torch.zeros(size, size, dtype=torch.float64)
                sums.index_add_(0, labels, feats)
                if second:
                    moment += feats.T @ feats
                counts += torch.bincount(labels, minlength=num_classes).double()
    finally:
        handle.remove()
    if sums is None or moment is None:
        raise FedpeftError("a client with no examples has no feature statistics.")
    out = {STATS_SUM: sums, STATS_COUNT: counts}
    return out | ({STATS_SECOND: moment} if second else {})
