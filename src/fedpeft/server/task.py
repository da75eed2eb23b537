"""Everything a run needs, built once from the config: data, partitions, the one model."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedpeft.allocation import client_groups
from fedpeft.config import ExperimentConfig, PeftConfig
from fedpeft.data import (
    DataProfile,
    ImageArrays,
    RawDataset,
    RawSplit,
    Split,
    TokenizedSplit,
    data_profile,
    holdout,
    image_split,
    load_dataset,
    partition_indices,
    reading_warnings,
    tokenize_split,
)
from fedpeft.data.checks import warn_once
from fedpeft.errors import FedpeftError
from fedpeft.models import (
    ModelSpec,
    get_model_spec,
    image_preprocess,
    is_vision_model,
    load_causal_lm,
    load_classifier,
    load_clip_matcher,
    load_detector,
    load_qa_model,
    load_tokenizer,
    load_vision_classifier,
    load_vqa_model,
)
from fedpeft.models.dropout import use_cpu_attention, use_fast_dropout
from fedpeft.models.precision import store_low
from fedpeft.peft import (
    Architecture,
    MethodRef,
    MethodSpec,
    architecture,
    get_adapter_state,
    parse_method_ref,
)
from fedpeft.peft.prefix import PrefixCache, compile_blocks
from fedpeft.peft.share import apply_shared
from fedpeft.server.config_checks import check_names, needs_proxy
from fedpeft.server.detection import DETECT_TASK
from fedpeft.server.evaluate import eval_batch_size
from fedpeft.server.instruct import head_kind, instruct_splits, task_kind
from fedpeft.server.multimodal import PAIR_TASKS
from fedpeft.server.precision import autocast_dtype, stores_frozen_low, with_autocast
from fedpeft.server.prefix import serve_prefix
from fedpeft.types import AdapterState

log = logging.getLogger("fedpeft.server")


@dataclass(frozen=True)
class FederatedData:
    """The data side of a task: splits tokenised once, client partitions, data profiles."""

    spec: ModelSpec
    dataset: RawDataset
    train: Split
    eval: Split
    partitions: list[np.ndarray]
    profiles: list[DataProfile]
    proxy: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tests: list[np.ndarray] = field(default_factory=list)  # each client's held-out share


@dataclass
class Task:
    """The data, the one frozen base and the run's PEFT model on it, built once."""

    cfg: ExperimentConfig
    data: FederatedData
    model: nn.Module  # the frozen base with the run's PEFT method applied
    base: nn.Module  # the frozen base every method's model shares
    device: torch.device
    method: MethodSpec  # the validated PEFT method options
    arch: Architecture  # the model's architecture (cost model, allocation), computed once
    full_model_bytes: int  # every base parameter: what full fine-tuning would send
    kind: str = "classify"  # "instruct": a causal LM generating the label word
    models: dict[tuple[str, str], nn.Module] = field(default_factory=dict)
    # the run's freshly initialised adapter: every client rebuilds it from the config and
    # seed, so compressed payloads are sent as deltas from it (``compression.bits_down``)
    initial: AdapterState = field(default_factory=dict)
    prefix_caches: dict[int, PrefixCache | None] = field(default_factory=dict)  # by block
    stored_low: bool = False  # frozen linear weights stored in bf16 (``stores_frozen_low``)

    @property
    def eval_batch_size(self) -> int:
        """``eval.batch_size``, or by device when unset (``eval_batch_size``)."""
        return eval_batch_size(self.cfg.eval.batch_size, self.device)

    @property
    def ref(self) -> MethodRef:
        """The run's ``[peft]`` method (what an instruction naming no method trains)."""
        return MethodRef.of(self.cfg.peft.method, self.cfg.peft.options)

    def model_for(self, method: str, options: str) -> nn.Module:
        """The shared-base model of ``method`` with ``options`` (canonical JSON), built once.

        ``""`` is the run's ``[peft]`` method. Unknown methods or bad options (e.g. from an
        untrusted instruction) raise ``FedpeftError``.
        """
        if not method:
            return self.model
        key = (method, options)
        if key not in self.models:
            spec = parse_method_ref(method, options).spec
            if self.stored_low and not type(spec).calls_base_linears:
                raise FedpeftError(
                    f"method {method!r} reads the base's weights, which this run stores in "
                    "bf16 (`run.frozen_bf16`); run it with `run.frozen_bf16 = false`."
                )
            model = apply_shared(self.base, spec, self.arch, self.cfg.run.seed)
            self.models[key] = self.prepare(model.to(self.device), spec)
        return self.models[key]

    def template(self, method: str, options: str) -> AdapterState:
        """The freshly initialised adapter of a configuration (its keys, shapes, init), on
        the CPU as the server holds states."""
        model = self.model_for(method, options)
        return {k: v.cpu() for k, v in get_adapter_state(model).items()}

    def prepare(self, model: nn.Module, spec: MethodSpec) -> nn.Module:
        """A freshly built model made ready (in place): fast dropout, autocast, the
        frozen-prefix cache, the CPU attention kernel."""
        if self.cfg.run.fast_dropout:
            use_fast_dropout(model)
        else:
            use_cpu_attention(model)
        dtype = autocast_dtype(self.cfg.run.autocast, self.device)
        serve_prefix(self, model, spec, dtype)
        if self.cfg.run.compile:
            compile_blocks(model, self.arch)
        return with_autocast(model, self.cfg.run.autocast)


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


def resolved(cfg: ExperimentConfig, method: MethodSpec) -> ExperimentConfig:
    """``cfg`` with the PEFT method's defaults and the task written out, as stored in the
    run folder."""
    options = method.model_dump(mode="json", exclude_none=True)
    peft = PeftConfig(method=cfg.peft.method, **options)
    model = cfg.model.model_copy(update={"task": task_kind(cfg)})
    return cfg.model_copy(update={"peft": peft, "model": model})


def build_data(cfg: ExperimentConfig) -> FederatedData:
    """Loads, tokenises and partitions the configured data (no model weights are loaded).

    When the aggregator needs a proxy set, ``server.proxy_size`` train examples (a seeded
    draw) are held out for the server before the rest is partitioned among clients; each
    client then holds out ``data.client_test_fraction`` of its partition (``holdout``)."""
    spec = get_model_spec(cfg.model.name)
    dataset = load_dataset(cfg.data, cfg.run.seed, image_side(cfg, spec))
    kind = task_kind(cfg, spec)
    if kind == "qa":
        return _qa_data(cfg, spec, dataset)
    if kind in PAIR_TASKS:
        return _pair_data(cfg, spec, dataset, kind)
    if kind == DETECT_TASK:
        return _detection_data(cfg, spec, dataset)
    train, evaluation = splits_for(cfg, spec, dataset)
    pool = np.arange(len(train.labels))
    proxy = np.zeros(0, dtype=np.int64)
    if needs_proxy(cfg):
        if cfg.server.proxy_size >= len(pool):
            raise FedpeftError(
                f"`server.proxy_size` is {cfg.server.proxy_size} but the train split has only "
                f"{len(pool)} examples; lower it or raise `data.train_size`."
            )
        rng = np.random.default_rng([cfg.run.seed, 0x9A0])
        proxy = np.sort(rng.choice(pool, size=cfg.server.proxy_size, replace=False))
        pool = np.setdiff1d(pool, proxy)
    groups = client_groups(cfg) if cfg.data.partition == "natural" else None
    parts = partition_indices(train.labels[pool], cfg.data, cfg.run.seed, groups)
    partitions = [pool[p] for p in parts]
    fraction = cfg.data.client_test_fraction
    partitions, tests = holdout(train.labels, partitions, fraction, cfg.run.seed)
    lengths = train.lengths
    profiles = [data_profile(train.labels[p], lengths[p], dataset.num_labels) for p in partitions]
    return FederatedData(spec, dataset, train, evaluation, partitions, profiles, proxy, tests)


def splits_for(cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset) -> tuple[Split, Split]:
    """``dataset``'s train and eval splits, prepared as the model and task take them."""
    if task_kind(cfg, spec) == "instruct":
        return instruct_splits(cfg, dataset, spec)
    splits = _image_splits if is_vision_model(spec) else _text_splits
    return splits(cfg, spec, dataset)


def _qa_data(cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset) -> FederatedData:
    """Question windows; clients get whole questions (``natural``: whole articles)."""
    from fedpeft.data.qa import QASplit, partition_questions, windows_of
    from fedpeft.server.qa import qa_splits

    train, evaluation = qa_splits(cfg, dataset, spec)
    questions = partition_questions(train.examples, cfg.data, cfg.run.seed)
    partitions = [windows_of(train, q) if isinstance(train, QASplit) else q for q in questions]
    profiles = [data_profile(train.labels[p], train.lengths[p], 1) for p in partitions]
    return FederatedData(spec, dataset, train, evaluation, partitions, profiles)


def train_questions(data: FederatedData) -> int | None:
    """A QA run's training questions over every client (None for another task): an
    extractive model's partitions count context windows, a question's many in a long
    context; a generative model's count questions."""
    from fedpeft.data.genqa import GenQASplit
    from fedpeft.data.qa import QASplit

    if isinstance(data.train, GenQASplit):
        return sum(len(p) for p in data.partitions)
    if not isinstance(data.train, QASplit):
        return None
    held = np.concatenate([np.zeros(0, np.int64), *data.partitions]).astype(np.int64)
    return len(np.unique(data.train.example[held]))


def _pair_data(
    cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset, kind: str
) -> FederatedData:
    """Image–text pairs; ``natural``: whole images per client."""
    from fedpeft.data.paired import partition_pairs
    from fedpeft.server.multimodal import pair_splits

    train, evaluation = pair_splits(cfg, dataset, spec, kind)
    partitions = partition_pairs(train, cfg.data, cfg.run.seed)
    n = dataset.num_labels
    profiles = [data_profile(train.labels[p], train.lengths[p], n) for p in partitions]
    return FederatedData(spec, dataset, train, evaluation, partitions, profiles)


def _detection_data(cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset) -> FederatedData:
    """Images with boxes; clients hold whole images, skewed by their dominant class."""
    from fedpeft.data.detection import partition_images
    from fedpeft.server.detection import detection_splits

    train, evaluation = detection_splits(cfg, dataset, spec)
    partitions = partition_images(train, cfg.data, cfg.run.seed)
    n = dataset.num_labels
    profiles = [data_profile(train.labels[p], train.lengths[p], n) for p in partitions]
    return FederatedData(spec, dataset, train, evaluation, partitions, profiles)


def _text_splits(
    cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset
) -> tuple[Split, Split]:
    """Token ids once; decoders are padded on the left."""
    if not isinstance(dataset.train, RawSplit) or not isinstance(dataset.eval, RawSplit):
        raise FedpeftError(f"dataset {dataset.name!r} holds images; `{spec.name}` takes text.")
    tokenizer = load_tokenizer(spec)
    left = spec.family == "llama" or tokenizer.padding_side == "left"
    train = tokenize_split(dataset.train, tokenizer, cfg.model.max_length, pad_left=left)
    evaluation = tokenize_split(dataset.eval, tokenizer, cfg.model.max_length, pad_left=left)
    # once: the per-class report rebuilds the task in the same process
    warn_once(log, *reading_warnings(train, tokenizer, cfg.model.max_length, spec.name))
    return train, evaluation


def _image_splits(
    cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset
) -> tuple[Split, Split]:
    """Decoded images, resized and normalised per batch as the model expects."""
    if not isinstance(dataset.train, ImageArrays) or not isinstance(dataset.eval, ImageArrays):
        raise FedpeftError(f"dataset {dataset.name!r} holds text; `{spec.name}` takes images.")
    preprocess = image_preprocess(spec, cfg.model.image_size)
    return image_split(dataset.train, preprocess), image_split(dataset.eval, preprocess)


def image_side(cfg: ExperimentConfig, spec: ModelSpec | None = None) -> int | None:
    """The square side an image model takes (custom images are decoded at it); None for a
    model that takes text."""
    spec = spec or get_model_spec(cfg.model.name)
    return image_preprocess(spec, cfg.model.image_size).size if is_vision_model(spec) else None


def input_side(cfg: ExperimentConfig, spec: ModelSpec, kind: str) -> int | None:
    """A detector's square input side (its sequence length follows from it), else None."""
    return image_preprocess(spec, cfg.model.image_size).size if kind == DETECT_TASK else None


def load_base(
    cfg: ExperimentConfig, spec: ModelSpec, dataset: RawDataset, pad_id: int | None = None
) -> nn.Module:
    """The frozen base model with a fresh task head (text or image model); ``pad_id``: the
    text batches' pad token (``load_classifier``)."""
    if is_vision_model(spec):
        size, names = cfg.model.image_size, dataset.label_names
        return load_vision_classifier(spec, dataset.num_labels, cfg.run.seed, size, names)
    return load_classifier(spec, dataset.num_labels, cfg.run.seed, dataset.label_names, pad_id)


def build_task(cfg: ExperimentConfig, data: FederatedData | None = None) -> Task:
    """The run's task: ``data`` (default: the configured data, loaded and partitioned) and
    the model built from the config and seed alone (``data`` gives it only the class names).
    A finished run's model is rebuilt for new inputs by passing them as ``data``."""
    method = check_names(cfg, tiers=data is None)  # given data: a finished run's rebuild
    set_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    data = data if data is not None else build_data(cfg)
    spec, dataset = data.spec, data.dataset
    with torch.random.fork_rng(devices=[]):  # head and adapter init: same seed, same model
        torch.manual_seed(cfg.run.seed)
        kind = task_kind(cfg, spec)
        base: nn.Module
        causal_lm, span = head_kind(kind, spec)
        if causal_lm:
            base = load_causal_lm(spec, cfg.run.seed)
        elif kind == "qa":
            base = load_qa_model(spec, cfg.run.seed)
        elif kind == "itm":
            base = load_clip_matcher(spec, cfg.run.seed)
        elif kind == "vqa":
            names = dataset.label_names
            base = load_vqa_model(spec, dataset.num_labels, cfg.run.seed, names)
        elif kind == DETECT_TASK:
            names = dataset.label_names
            size = cfg.model.image_size
            base = load_detector(spec, dataset.num_labels, cfg.run.seed, names, size)
        else:
            pad = data.train.pad_id if isinstance(data.train, TokenizedSplit) else None
            base = load_base(cfg, spec, dataset, pad)
        full_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
        arch = architecture(
            base.config,
            dataset.num_labels,
            causal_lm=causal_lm,
            qa=span,
            matching=kind == "itm",
            image_size=input_side(cfg, spec, kind),
        )
        model = apply_shared(base, method, arch, cfg.run.seed).to(device)
    low = autocast_dtype(cfg.run.autocast, device)
    stored = 0
    if low is not None and stores_frozen_low(cfg, method, kind, spec):
        stored = store_low(model, low, sharing=(base,))
        log.info("%d frozen linear layers stored in %s", stored, str(low).removeprefix("torch."))
    log.info(
        "task: %s on %s (%d train, %d eval), %d clients, device %s%s",
        data.spec.name,
        data.dataset.name,
        len(data.train),
        len(data.eval),
        len(data.partitions),
        device,
        ", bf16 autocast" if low is not None else "",
    )
    task = Task(
        cfg=cfg,
        data=data,
        model=model,
        base=base.to(device),
        device=device,
        method=method,
        arch=arch,
        full_model_bytes=full_bytes,
        kind=kind,
        models={(cfg.peft.method, _canonical(cfg.peft.options)): model},
        stored_low=stored > 0,
        initial={k: v.detach().cpu().clone() for k, v in get_adapter_state(model).items()},
    )
    task.prepare(model, method)
    return task


def _canonical(options: dict[str, object]) -> str:
    return json.dumps(options, sort_keys=True)
