"""When and how a run's models serve a frozen-prefix cache (``peft/prefix.py``).

A model is served when ``run.prefix_cache`` is on, the model is a text encoder classifier
(BERT, RoBERTa), its method trains nothing below block ``L ≥ 1`` (``MethodSpec.
lowest_trained_block``; a head alone: every block) and the states of the train and eval
splits fit ``run.prefix_cache_mb``. One cache per ``L``, shared by every model with that
``L``, filled once when the first such model is built (so before training workers fork,
which then share it).
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from torch import nn

from fedpeft.config import ExperimentConfig
from fedpeft.data import Split, TokenizedSplit
from fedpeft.peft import Architecture, MethodSpec
from fedpeft.peft.prefix import SERVED_FAMILIES, PrefixCache, attach

log = logging.getLogger("fedpeft.server")


class _Data(Protocol):
    @property
    def train(self) -> Split: ...
    @property
    def eval(self) -> Split: ...


class Task(Protocol):
    """What serving a prefix needs of ``server.task.Task``."""

    cfg: ExperimentConfig
    base: nn.Module
    device: torch.device
    arch: Architecture
    kind: str
    prefix_caches: dict[int, PrefixCache | None]

    @property
    def data(self) -> _Data: ...


def cached_layer(task: Task, spec: MethodSpec) -> int | None:
    """The block whose input would be cached for ``spec``; ``None``: nothing to cache."""
    cfg, arch = task.cfg, task.arch
    splits = (task.data.train, task.data.eval)
    if not cfg.run.prefix_cache or task.kind != "classify" or arch.family not in SERVED_FAMILIES:
        return None
    if not all(isinstance(s, TokenizedSplit) and not s.pad_left for s in splits):
        return None
    lowest = spec.lowest_trained_block(arch)
    layer = arch.layers if lowest is None else lowest
    return layer if layer >= 1 else None


def serve_prefix(task: Task, model: nn.Module, spec: MethodSpec, dtype: torch.dtype | None) -> None:
    """Attaches (in place) the cache of ``spec``'s lowest trained block to ``model``, filling
    it first if no model has; logs what was decided."""
    layer = cached_layer(task, spec)
    if layer is None:
        return
    if layer not in task.prefix_caches:
        task.prefix_caches[layer] = _fill(task, layer, dtype)
    cache = task.prefix_caches[layer]
    if cache is not None and attach(model, task.arch, cache):
        log.info("frozen prefix: the embeddings and the %d block(s) below block %d run once "
                 "per example (cache %.1f MiB)", layer, layer, cache.nbytes / 2**20)  # fmt: skip


def cache_bytes(tokens: int, hidden: int, dtype: torch.dtype | None) -> int:
    """What a cache of ``tokens`` hidden states of width ``hidden`` holds, in bytes."""
    width = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    return tokens * hidden * width


def _fill(task: Task, layer: int, dtype: torch.dtype | None) -> PrefixCache | None:
    train, evaluation = task.data.train, task.data.eval
    assert isinstance(train, TokenizedSplit) and isinstance(evaluation, TokenizedSplit)
    tokens = int(train.lengths.sum() + evaluation.lengths.sum())
    need = cache_bytes(tokens, task.arch.hidden, dtype)
    if need > task.cfg.run.prefix_cache_mb * 2**20:
        log.info("frozen prefix: not cached (%.0f MiB needed, run.prefix_cache_mb = %d)",
                 need / 2**20, task.cfg.run.prefix_cache_mb)  # fmt: skip
        return None
    cache = PrefixCache(layer, train.pad_id)
    base = task.base
    forward = torch.autocast(task.device.type, dtype=dtype)(base) if dtype else None
    cache.fill(base, [*train.input_ids, *evaluation.input_ids], task.device, forward)
    return cache
