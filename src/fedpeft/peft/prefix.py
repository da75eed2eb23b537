"""Frozen work done once: the hidden states entering the lowest trained block, per example.

When a method trains nothing below block ``L`` (LoRA or adapters on the top blocks, a task
head alone), the embeddings and blocks ``0 … L−1`` compute the same function of the same
examples in every step of every round: the base is frozen and the examples are fixed.
``PrefixCache`` computes their output once per example (the base in evaluation mode, so
without dropout) and ``attach`` makes a model serve it: for a batch whose every example
is cached, the embeddings return the cached states (zero-padded to the batch's width)
and blocks ``0 … L−1`` pass them through, so the forward pass starts at block ``L``;
any other batch runs the whole model as before.

Examples are keyed by their token ids, so training and evaluation need not say which
examples a batch holds. Only encoders (BERT, RoBERTa) are served: their padding is on the
right and their pad token never occurs inside a text. The one semantic change: dropout in
the cached blocks is off (frozen blocks' dropout only adds noise to their outputs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpeft.peft.arch import Architecture

log = logging.getLogger("fedpeft.peft")

SERVED_FAMILIES = frozenset({"bert", "roberta"})


def blocks_path(arch: Architecture) -> str:
    """The module path of the model's block list, e.g. ``bert.encoder.layer``."""
    name = next(lin.name for lin in arch.linears if lin.layer is not None)
    layer = next(lin.layer for lin in arch.linears if lin.layer is not None)
    return name[: name.index(f".{layer}.")]


class PrefixCache:
    """Per example (its token ids), the hidden states entering block ``layer``."""

    def __init__(self, layer: int, pad_id: int) -> None:
        self.layer, self.pad_id = layer, pad_id
        self.states: dict[bytes, torch.Tensor] = {}
        self.hits = 0  # examples served from the cache (each skipped ``layer`` blocks)
        self.misses = 0  # examples in batches that ran the whole model

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())

    def fill(
        self,
        base: nn.Module,
        examples: Sequence[np.ndarray],
        device: torch.device,
        forward: Callable[..., Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        """Computes every example's states through ``base`` (``forward`` wraps its call,
        e.g. autocast), in length-sorted batches, in evaluation mode."""
        order = np.argsort([len(e) for e in examples], kind="stable")
        was_training = base.training
        base.eval()
        call = forward or base
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = [examples[i] for i in order[start : start + batch_size]]
                ids, mask = _pad(rows, self.pad_id, device)
                hidden = call(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                states = hidden.hidden_states[self.layer]
                for r, row in enumerate(rows):
                    self.states[row.tobytes()] = states[r, : len(row)].detach().clone().cpu()
        base.train(was_training)

    def lookup(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The batch's states zero-padded to its width, or ``None`` unless all are cached."""
        rows = []
        for row in input_ids.cpu().numpy():
            real = np.flatnonzero(row != self.pad_id)
            key = row[: real[-1] + 1 if len(real) else 0].tobytes()
            state = self.states.get(key)
            if state is None:
                self.misses += len(input_ids)
                return None
            rows.append(state)
        out = rows[0].new_zeros((len(rows), input_ids.shape[1], rows[0].shape[-1]))
        for r, state in enumerate(rows):
            out[r, : len(state)] = state
        self.hits += len(rows)
        return out.to(input_ids.device)


def attach(model: nn.Module, arch: Architecture, cache: PrefixCache) -> bool:
    """Makes ``model`` (in place) serve ``cache``; refuses (False) when any parameter below
    the cached block trains, so a wrong cache can never be served."""
    root = _module_ending(model, blocks_path(arch))
    embeddings = _module_ending(model, blocks_path(arch).rsplit(".", 2)[0] + ".embeddings")
    if root is None or embeddings is None or not isinstance(root, nn.ModuleList):
        return False
    below = [embeddings, *list(root)[: cache.layer]]
    if any(p.requires_grad for m in below for p in m.parameters()):
        return False
    skip = [False]
    inner = embeddings.forward

    def embed(input_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        states = cache.lookup(input_ids) if input_ids is not None else None
        skip[0] = states is not None
        return states if states is not None else inner(input_ids=input_ids, **kwargs)

    embeddings.forward = embed
    for block in below[1:]:
        block.forward = _passthrough(block.forward, skip)
    return True


def compile_blocks(model: nn.Module, arch: Architecture) -> None:
    """``torch.compile`` (in place, dynamic shapes) of every transformer block of ``model``
    — the heavy, regular part — or of the whole model where no block list is found."""
    root = (
        _module_ending(model, blocks_path(arch))
        if any(lin.layer is not None for lin in arch.linears)
        else None
    )
    if isinstance(root, nn.ModuleList):
        for block in root:
            block.compile(dynamic=True)
    else:
        model.compile(dynamic=True)


def _passthrough(inner: Callable[..., Any], skip: list[bool]) -> Callable[..., Any]:
    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if skip[0] else inner(hidden_states, *args, **kwargs)

    return forward


def _module_ending(model: nn.Module, suffix: str) -> nn.Module | None:
    for name, module in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            return module
    return None


def _pad(
    rows: Sequence[np.ndarray], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.from_numpy(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)
