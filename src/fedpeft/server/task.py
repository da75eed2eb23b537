"""Everything a run needs, built once from the config: data, partitions, the one model."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedpeft.config import ExperimentConfig, PeftConfig
from fedpeft.data import (
    DataProfile,
    RawDataset,
    TokenizedSplit,
    data_profile,
    load_dataset,
    partition_indices,
    tokenize_split,
)
from fedpeft.data.instruct import InstructSplit
from fedpeft.errors import FedpeftError
from fedpeft.models import (
    ModelSpec,
    get_model_spec,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
)
from fedpeft.peft import MethodSpec, architecture, parse_spec
from fedpeft.server.instruct import check_task, instruct_splits, task_kind

log = logging.getLogger("fedpeft.server")


@dataclass
class Task:
    cfg: ExperimentConfig
    spec: ModelSpec
    dataset: RawDataset
    train: TokenizedSplit | InstructSplit
    eval: TokenizedSplit | InstructSplit
    partitions: list[np.ndarray]
    profiles: list[DataProfile]
    model: nn.Module  # the frozen base with the PEFT method applied; shared by all clients
    device: torch.device
    full_model_bytes: int  # every base parameter: what full fine-tuning would send
    method: MethodSpec  # the validated PEFT method options
    kind: str = "classify"  # "instruct": a causal LM generating the label word


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FedpeftError("`run.device` is 'cuda' but no CUDA device is available; use 'auto'.")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """Sets torch's intra-op threads deliberately: 0 means one per available core."""
    if threads == 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


def check_names(cfg: ExperimentConfig) -> MethodSpec:
    """Fails fast on every section that the schema alone cannot check (plugin names, method
    options, strategy, allocation, profiles), before anything loads or is written."""
    from fedpeft.allocation import make_allocation_config
    from fedpeft.profiling import load_profiles
    from fedpeft.server.strategy import strategy_from_config

    strategy_from_config(cfg.server)
    make_allocation_config(cfg.allocation)
    if cfg.profiles.file is not None:
        load_profiles(Path(cfg.profiles.file))
    check_task(cfg)
    return parse_spec(cfg.peft.method, cfg.peft.options)


def resolved(cfg: ExperimentConfig, method: MethodSpec) -> ExperimentConfig:
    """``cfg`` with the PEFT method's defaults and the task written out, as stored in the
    run folder."""
    options = method.model_dump(mode="json", exclude_none=True)
    peft = PeftConfig(method=cfg.peft.method, **options)
    model = cfg.model.model_copy(update={"task": task_kind(cfg)})
    return cfg.model_copy(update={"peft": peft, "model": model})


@dataclass(frozen=True)
class FederatedData:
    """The data side of a task: splits tokenised once, client partitions, data profiles."""

    spec: ModelSpec
    dataset: RawDataset
    train: TokenizedSplit | InstructSplit
    eval: TokenizedSplit | InstructSplit
    partitions: list[np.ndarray]
    profiles: list[DataProfile]


def build_data(cfg: ExperimentConfig) -> FederatedData:
    """Loads, tokenises and partitions the configured data (no model weights are loaded)."""
    dataset = load_dataset(cfg.data, cfg.run.seed)
    spec = get_model_spec(cfg.model.name)
    train, evaluation = (
        instruct_splits(cfg, dataset, spec)
        if task_kind(cfg, spec) == "instruct"
        else _classify_splits(cfg, dataset, spec)
    )
    partitions = partition_indices(train.labels, cfg.data, cfg.run.seed)
    lengths = train.lengths
    profiles = [data_profile(train.labels[p], lengths[p], dataset.num_labels) for p in partitions]
    return FederatedData(spec, dataset, train, evaluation, partitions, profiles)


def _classify_splits(
    cfg: ExperimentConfig, dataset: RawDataset, spec: ModelSpec
) -> tuple[TokenizedSplit, TokenizedSplit]:
    tokenizer = load_tokenizer(spec)
    left = spec.family == "llama" or tokenizer.padding_side == "left"
    train = tokenize_split(dataset.train, tokenizer, cfg.model.max_length, pad_left=left)
    evaluation = tokenize_split(dataset.eval, tokenizer, cfg.model.max_length, pad_left=left)
    return train, evaluation


def build_task(cfg: ExperimentConfig) -> Task:
    method = check_names(cfg)
    set_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    data = build_data(cfg)
    spec, dataset, train, evaluation = data.spec, data.dataset, data.train, data.eval
    partitions, profiles = data.partitions, data.profiles
    with torch.random.fork_rng(devices=[]):  # head and adapter init: same seed, same model
        torch.manual_seed(cfg.run.seed)
        kind = task_kind(cfg, spec)
        if kind == "instruct":
            base = load_causal_lm(spec, cfg.run.seed)
        else:
            base = load_classifier(spec, dataset.num_labels, cfg.run.seed)
        full_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
        arch = architecture(base.config, dataset.num_labels, causal_lm=kind == "instruct")
        model = method.apply(base, arch).to(device)
    log.info(
        "task: %s on %s (%d train, %d eval), %d clients, device %s",
        spec.name,
        dataset.name,
        len(train),
        len(evaluation),
        len(partitions),
        device,
    )
    return Task(
        cfg,
        spec,
        dataset,
        train,
        evaluation,
        partitions,
        profiles,
        model,
        device,
        full_bytes,
        method,
        kind,
    )
