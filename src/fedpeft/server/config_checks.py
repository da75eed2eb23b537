"""The checks a run passes before anything loads or is written: names, method options,
strategy, allocation, profiles, the model's pairing with the data and the PEFT method, and
options that each work but not together (``check_names`` runs them all)."""

from __future__ import annotations

from pathlib import Path

from fedpeft.config import ExperimentConfig
from fedpeft.data import check_custom_modality, check_dataset_name, is_image_dataset
from fedpeft.errors import FedpeftError
from fedpeft.models import (
    ModelSpec,
    check_available,
    get_model_spec,
    image_preprocess,
    is_vision_model,
    load_model_config,
)
from fedpeft.peft import MethodSpec, architecture, check_supported, parse_spec
from fedpeft.peft.support import IMAGE_FAMILIES
from fedpeft.server.detection import DETECT_TASK
from fedpeft.server.head_when import check_classifier_options, check_head_refresh
from fedpeft.server.instruct import check_task, head_kind, task_kind
from fedpeft.server.multimodal import FAMILY, PAIR_DATASETS, PAIR_TASKS


def check_names(cfg: ExperimentConfig, tiers: bool = True, hub: bool = True) -> MethodSpec:
    """Fails fast on every section that the schema alone cannot check (plugin names, method
    options, strategy, allocation, profiles), before anything loads or is written.
    ``tiers=False``: a finished run's final model is rebuilt (predict, per-class report),
    which needs no devices, so a ``profiles.file`` it names is not read. ``hub=False``: a
    hub model need not be at hand (a grid's plan, of which this machine may run none)."""
    from fedpeft.allocation import make_allocation_config
    from fedpeft.profiling import load_profiles
    from fedpeft.server.personal import check_personalization
    from fedpeft.server.strategy import strategy_from_config

    check_dataset_name(cfg.data)
    strategy_from_config(cfg.server, evaluate_proxy=lambda _: 0.0, groups=True)  # names only
    make_allocation_config(cfg.allocation)
    if tiers and cfg.profiles.file is not None:
        load_profiles(Path(cfg.profiles.file))
    method = parse_spec(cfg.peft.method, cfg.peft.options)
    check_pairing(cfg, hub)
    kind = check_task(cfg)
    if kind in ("qa", DETECT_TASK, *PAIR_TASKS) and needs_proxy(cfg):
        raise FedpeftError(
            f"`server.aggregator` {cfg.server.aggregator!r} needs a labelled proxy set of "
            f"classification examples; with `model.task` {kind!r} use a rule without one "
            "(e.g. 'fedavg')."
        )
    check_combinations(cfg)
    check_personalization(cfg)
    return method


def check_combinations(cfg: ExperimentConfig) -> None:
    """Options that each work but not together, refused before anything loads."""
    from fedpeft.privacy import check_privacy
    from fedpeft.server.merge import check_flora
    from fedpeft.server.scaffold import check_scaffold

    check_flora(cfg)
    check_scaffold(cfg)  # before the generic checks: its refusals say why for SCAFFOLD
    check_privacy(cfg)  # DP and secure aggregation with the aggregator, mode and allocation
    if cfg.compression.bits_up == "adaptive" and cfg.server.mode == "async":
        raise FedpeftError(
            "`compression.bits_up = 'adaptive'` chooses bits against the synchronous round's "
            "deadline; with `server.mode = 'async'` give a fixed width (32, 16, 8, 4 or 2)."
        )
    if cfg.compression.bits_down != 32 and (cfg.allocation.enabled or cfg.server.mode == "async"):
        raise FedpeftError(
            "`compression.bits_down` below 32 sends the global as a delta from the run's "
            "initial adapter, which allocated configurations and asynchronous servers do not "
            "share; set `compression.bits_down = 32` with allocation or `server.mode = 'async'`."
        )
    check_head_refresh(cfg)
    check_classifier_options(cfg)
    if cfg.data.client_test_fraction > 0 and task_kind(cfg) == "qa":
        raise FedpeftError(
            "`data.client_test_fraction` scores clients on held-out classification examples; "
            "question answering is scored centrally only, so set it to 0 with `model.task = 'qa'`."
        )


def check_pairing(cfg: ExperimentConfig, hub: bool = True) -> None:
    """The model must take the dataset's modality and support the PEFT method (and, with
    ``hub``, be at hand: a hub model on an offline machine fails here, in a second)."""
    spec = get_model_spec(cfg.model.name)
    if hub:
        check_available(spec)
    pairs = cfg.data.dataset in PAIR_DATASETS or spec.family == FAMILY["vqa"]
    if pairs or task_kind(cfg, spec) in (*PAIR_TASKS, DETECT_TASK):
        return  # images with texts or boxes: ``check_task`` checks model, data and method
    if spec.family not in IMAGE_FAMILIES and Path(spec.hub_id).is_dir():  # not registered
        check_local_model(cfg, spec)
    vision = is_vision_model(spec)
    if cfg.data.dataset == "custom":  # a folder is images; a table is read as the model reads
        check_custom_modality(cfg.data, spec.name, vision)
    elif vision != is_image_dataset(cfg.data.dataset):
        takes, holds = ("images", "text") if vision else ("text", "images")
        raise FedpeftError(
            f"model `{spec.name}` takes {takes} but dataset {cfg.data.dataset!r} holds "
            f"{holds}; pair image models with cifar10/fashion_mnist or custom images, text "
            "models with text data."
        )
    if vision:
        image_preprocess(spec, cfg.model.image_size)  # a size the model cannot take fails here
    check_supported(cfg.peft.method, spec.family, spec.name)


def check_local_model(cfg: ExperimentConfig, spec: ModelSpec) -> None:
    """A local folder (a user's own checkpoint) must hold a text model that the run's task
    has a cost model for; its config.json alone is read, so another model type is refused
    before any data or weights load (not after both), naming the supported ones."""
    causal_lm, span = head_kind(task_kind(cfg, spec), spec)
    try:
        arch = architecture(load_model_config(spec, 2), 2, causal_lm=causal_lm, qa=span)
    except FedpeftError as e:
        raise FedpeftError(f"model `{spec.name}` cannot be run: {e}") from None
    if arch.family in IMAGE_FAMILIES:
        raise FedpeftError(
            f"model `{spec.name}` is a local {arch.family} folder; image models load by their "
            "registered names only (README, *Image models*), local folders hold text models."
        )


def needs_proxy(cfg: ExperimentConfig) -> bool:
    """Whether the aggregator needs a server-side proxy set (layer-wise weights, KD)."""
    from fedpeft.aggregation import aggregator_parts

    parts = aggregator_parts(cfg.server.aggregator)
    return parts.needs_eval or parts.fuse is not None
