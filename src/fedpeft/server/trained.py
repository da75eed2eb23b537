"""A finished run's final global model, rebuilt as the run built it, for new texts or images.

``open_finished(run_dir)`` reads what a finished run left and trusts none of it unchecked:
its resolved ``config.toml`` (validated as ``fedpeft run`` validates it), that it finished
(``summary.json``, ``metrics.jsonl`` and ``run.rounds`` agree on its last round), the
checkpoint of that round (``Checkpoints.load_round``: the manifest's sha256s and the config's
fingerprint verify, and no older round stands in for a damaged last one) and its class
names (``partitions.json``). ``final_model`` then builds the run's task for the given texts
or images (``text_data``, ``image_data``: prepared as the run prepared its own;
``build_task``: the same base model, method, seed, precision and autocast as the run) and
loads the final global adapter of the run's main group — the configuration the run
evaluated and exported as ``adapter/`` — in evaluation mode, as the run's own evaluation
does (``LocalGlobalModel.evaluate``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from fedpeft.config import ExperimentConfig, build_config, read_toml
from fedpeft.config.loading import accepted_fingerprints
from fedpeft.data import ImageArrays, RawDataset, RawSplit, stored_form
from fedpeft.data.cleaning import text_cleaning
from fedpeft.data.labels import normalize_label
from fedpeft.errors import FedpeftError
from fedpeft.files import json_kind, read_json_object
from fedpeft.models import get_model_spec
from fedpeft.peft import parse_method_ref, set_adapter_state
from fedpeft.server.checkpoint import Checkpoints
from fedpeft.server.config_checks import check_names
from fedpeft.server.groups import GroupBook
from fedpeft.server.state import ServerState
from fedpeft.server.store import ADAPTER, CHECKPOINT, CONFIG, METRICS, PARTITIONS, SUMMARY
from fedpeft.server.task import (
    FederatedData,
    Task,
    build_task,
    image_side,
    resolved,
    splits_for,
)
from fedpeft.server.validate import RejectedUpdate, check_tensors

PREDICTING = ("cannot be used for prediction", "nothing was predicted")


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run folder holds that rebuilding its final model needs, verified."""

    root: Path
    cfg: ExperimentConfig  # the resolved configuration the run ran with
    state: ServerState  # the server state after the last round
    dataset: str  # the run's dataset name (an instruction prompt names it)
    label_names: list[str]  # the run's classes, in class-id order
    source: str = ""  # where its data came from (``partitions.json``): a folder, ``hub:…``


def open_finished(run_dir: Path) -> FinishedRun:
    """The finished run in ``run_dir``; a folder that is not one, or whose files do not
    verify, is refused with one sentence (``FedpeftError``). Nothing in it is written."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FedpeftError(f"{root} is not a folder; pass a finished run folder (runs/<run-id>).")
    for name in (CONFIG, SUMMARY):
        if not (root / name).is_file():
            raise FedpeftError(
                f"{root} is not a finished fedpeft run (it has no {name}); pass a run folder "
                "that `fedpeft run` completed (an interrupted one: finish it with "
                "`fedpeft run --resume`)."
            )
    cfg = build_config(read_toml(root / CONFIG), source=f"config {root / CONFIG}")
    state = final_state(root, cfg, PREDICTING)
    dataset, names, source = _classes(root)
    _check_classes(root, cfg, names)
    return FinishedRun(root, cfg, state, dataset, names, source)


def final_state(root: Path, cfg: ExperimentConfig, refusal: tuple[str, str]) -> ServerState:
    """The server state after a finished run's last round (``metrics.jsonl``'s), verified by
    its manifest and ``cfg``'s fingerprint; no older round stands in for a damaged last one.
    ``refusal``: (what the folder cannot be used for, what was not done), for the messages."""
    last = _finished_round(root, cfg, refusal)
    fingerprints = accepted_fingerprints(resolved(cfg, check_names(cfg, tiers=False)))
    return Checkpoints(root / CHECKPOINT, fingerprints, refusal).load_round(last)


def _finished_round(root: Path, cfg: ExperimentConfig, refusal: tuple[str, str]) -> int:
    """The run's last round, refused unless the run finished there: ``summary.json`` is
    written only when a run completes, so a resume interrupted later leaves an older one
    (and rounds past it) behind; its ``rounds_completed``, the last round ``metrics.jsonl``
    records and the config's ``run.rounds`` must all agree."""
    last = _last_round(root, refusal)
    completed = _rounds_completed(root, refusal)
    if not completed == last == cfg.run.rounds:
        raise FedpeftError(
            f"run folder {root} {refusal[0]}: it is not finished ({SUMMARY} says "
            f"{completed} rounds completed, {METRICS} ends at round {last}, its {CONFIG} "
            f"asks for {cfg.run.rounds}); finish it with `fedpeft run --resume {root}`, "
            f"{refusal[1]}."
        )
    return last


def _rounds_completed(root: Path, refusal: tuple[str, str]) -> int:
    """``summary.json``'s ``rounds_completed``; a summary that cannot be read or has no
    whole round count is refused with one sentence saying so."""
    summary = read_json_object(root / SUMMARY, f"the run {refusal[0]}, {refusal[1]}")
    completed = summary.get("rounds_completed")
    if isinstance(completed, bool) or not isinstance(completed, int):
        raise FedpeftError(
            f"run folder {root} {refusal[0]}: its {SUMMARY} has no round count "
            f"(`rounds_completed` is a {json_kind(completed)}, not a whole number); restore "
            f"the run's files, {refusal[1]}."
        )
    return completed


def _last_round(root: Path, refusal: tuple[str, str]) -> int:
    """The last round ``metrics.jsonl`` records: the round whose state is the final one."""
    try:
        lines = [ln for ln in (root / METRICS).read_text().splitlines() if ln.strip()]
        rounds = [json.loads(ln)["round"] for ln in lines]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        rounds = []
    if not rounds or not all(isinstance(r, int) for r in rounds):
        raise FedpeftError(
            f"run folder {root} {refusal[0]}: its {METRICS} does not say which round was "
            f"its last (missing or not JSON lines with a round); {refusal[1]}."
        )
    return max(rounds)


def _classes(root: Path) -> tuple[str, list[str], str]:
    """(dataset name, class names, data source) from ``partitions.json``."""
    try:
        raw = json.loads((root / PARTITIONS).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raw = None
    names = raw.get("label_names") if isinstance(raw, dict) else None
    dataset = raw.get("dataset") if isinstance(raw, dict) else None
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
        or not isinstance(dataset, str)
    ):
        raise FedpeftError(
            f"run folder {root} {PREDICTING[0]}: its {PARTITIONS} does not name the run's "
            f"classes (a `label_names` list of distinct strings); {PREDICTING[1]}."
        )
    source = raw.get("source") if isinstance(raw, dict) else None
    return dataset, list(names), source if isinstance(source, str) else ""


def _check_classes(root: Path, cfg: ExperimentConfig, names: list[str]) -> None:
    """Refuses class names (``partitions.json``) that differ from what the trained state is
    tied to: the config's ``data.label_names`` (fingerprinted with the checkpoint) where it
    sets them, and the ``id2label`` of the exported classifier's ``adapter/config.json``
    (written with the final adapter); reordered names would silently relabel every
    prediction."""
    given = cfg.data.label_names  # canonical as the run made them (``1.0`` is class ``1``)
    tied = {
        f"{CONFIG}'s data.label_names": None
        if given is None
        else [normalize_label(n, "`data.label_names`") for n in given]
    }
    head = root / ADAPTER / "config.json"
    if head.is_file():
        try:
            id2label = json.loads(head.read_text()).get("id2label")
            tied[f"{ADAPTER}/config.json's id2label"] = [
                id2label[str(i)] for i in range(len(id2label))
            ]
        except (OSError, ValueError, AttributeError, KeyError, TypeError, RecursionError):
            tied[f"{ADAPTER}/config.json's id2label"] = ["(unreadable)"]
    for where, expected in tied.items():
        if expected == [f"LABEL_{i}" for i in range(len(names))]:
            continue  # transformers' placeholder names (an image model's head): no names
        if expected is not None and list(expected) != names:
            raise FedpeftError(
                f"run folder {root} {PREDICTING[0]}: its {PARTITIONS} names the classes "
                f"{names[:10]} but {where} gives {list(expected)[:10]}; restore the run's "
                f"files, {PREDICTING[1]}."
            )


def text_data(
    run: FinishedRun, texts: list[str], labels: np.ndarray | None = None
) -> FederatedData:
    """``texts`` (with class ids ``labels``, or none) as the run's eval split, prepared as the
    run prepared its texts: cleaned as its dataset's loader cleaned them (``text_cleaning``;
    texts it read from the hub were not), then ``splits_for`` (tokeniser,
    ``model.max_length``, padding side, instruction prompts); no train split, no clients."""
    cfg, spec = run.cfg, get_model_spec(run.cfg.model.name)
    if not run.source.startswith("hub:"):
        texts = list(map(text_cleaning(cfg.data.dataset), texts))
    ids = np.zeros(len(texts), dtype=np.int64) if labels is None else labels
    empty = RawSplit([], np.zeros(0, dtype=np.int64))
    dataset = RawDataset(run.dataset, empty, RawSplit(texts, ids), run.label_names, "input")
    train, evaluation = splits_for(cfg, spec, dataset)
    return FederatedData(spec, dataset, train, evaluation, partitions=[], profiles=[])


def image_form(run: FinishedRun) -> tuple[int, int]:
    """(square side, channels) at which the run's images were decoded before its batches
    resized and normalised them: a built-in dataset's stored form (``stored_form``: CIFAR-10
    32 × 32 RGB, Fashion-MNIST 28 × 28 grayscale), custom images' model side in RGB. New
    images decoded so go through the run's own batches as its eval images did."""
    return stored_form(run.cfg.data.dataset) or (_model_side(run), 3)


def _model_side(run: FinishedRun) -> int:
    side = image_side(run.cfg)
    assert side is not None, "image_form is for image models"
    return side


def image_data(run: FinishedRun, images: np.ndarray) -> FederatedData:
    """Decoded ``images`` (``uint8`` N × side × side × channels, ``image_form``) as the run's
    eval split, resized and normalised per batch as the run's own (``splits_for``); no
    labels (class 0), no train split, no clients."""
    side, channels = image_form(run)
    empty = ImageArrays(np.zeros((0, side, side, channels), np.uint8), np.zeros(0, np.int64))
    arrays = ImageArrays(images, np.zeros(len(images), dtype=np.int64))
    dataset = RawDataset(run.dataset, empty, arrays, run.label_names, "input")
    spec = get_model_spec(run.cfg.model.name)
    train, evaluation = splits_for(run.cfg, spec, dataset)
    return FederatedData(spec, dataset, train, evaluation, partitions=[], profiles=[])


@dataclass(frozen=True)
class FinalModel:
    task: Task  # the run's task, built for the texts to predict
    model: nn.Module  # the main group's model with the final global adapter, eval mode
    method: str  # that model's method and options, e.g. ``lora r=8 alpha=16.0``


def final_model(run: FinishedRun, data: FederatedData) -> FinalModel:
    """The run's task for ``data`` and the model of its main group with the final global
    adapter loaded, in evaluation mode (under the run's autocast, as ``Task.prepare`` left
    it). The frozen-prefix cache (``run.prefix_cache``) stays off: it would first run every
    text's frozen blocks, holding their states, to save nothing on a single pass; each text
    runs through the whole model instead, as the cache's own fallback does."""
    no_cache = run.cfg.run.model_copy(update={"prefix_cache": False})
    task = build_task(run.cfg.model_copy(update={"run": no_cache}), data)
    state = run.state
    if state.main not in state.adapters:
        raise FedpeftError(
            f"run folder {run.root} {PREDICTING[0]}: no global adapter was ever trained "
            f"in it; {PREDICTING[1]}."
        )
    book = GroupBook(task, state.members)
    adapter, method, options = book.eval_state(state.main, state.adapters[state.main])
    try:
        check_tensors(adapter, task.template(method, options))
    except RejectedUpdate as e:
        raise FedpeftError(
            f"run folder {run.root} {PREDICTING[0]}: its final state does not fit the model "
            f"its {CONFIG} and {PARTITIONS} describe ({e}); {PREDICTING[1]}."
        ) from None
    model = task.model_for(method, options)
    set_adapter_state(model, {k: v.to(task.device) for k, v in adapter.items()})
    model.eval()
    ref = parse_method_ref(method, options, task.ref)
    chosen = ref.spec.model_dump(mode="json", exclude_none=True)
    shown = [f"{k}={v}" for k, v in chosen.items() if v not in ({}, [])]
    label = " ".join([ref.method, *shown])
    return FinalModel(task, model, label)
