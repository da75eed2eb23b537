"""Which task a run trains — classification head, instruction-tuned causal LM, extractive
QA (``server/qa.py``), image–text matching or visual question answering
(``server/multimodal.py``) — and the supported (model family, task, method) combinations,
checked before anything loads.

``model.task = "auto"`` means ``qa`` for question-answering data (SQuAD), ``vqa`` for ViLT,
``detect`` for a detector (YOLOS, CenterNet on Lite0) or detection data (BCCD, COCO128;
``server/detection.py``), ``itm`` for CLIP on image–text pairs (DAQUAR), ``instruct`` for
decoder LLMs (the LLaMA family) and ``classify`` for every other model; ``classify`` on a
decoder trains a sequence-classification head as before.
"""

from __future__ import annotations

from typing import Literal

from fedpeft.config import ExperimentConfig
from fedpeft.data import RawDataset
from fedpeft.data.boxes import DETECTION_DATASETS
from fedpeft.data.instruct import InstructSplit, tokenize_instruct
from fedpeft.data.sources import RawSplit
from fedpeft.errors import FedpeftError
from fedpeft.models import ModelSpec, get_model_spec, load_tokenizer
from fedpeft.models.yolos import DETECTION_FAMILIES
from fedpeft.peft import method_names
from fedpeft.server.detection import DETECT_TASK, check_detect, supported_detection
from fedpeft.server.generate import check_label_words
from fedpeft.server.multimodal import (
    FAMILY,
    PAIR_DATASETS,
    PAIR_TASKS,
    check_pair_task,
)
from fedpeft.server.multimodal import (
    supported_pairs as supported_image_text,
)
from fedpeft.server.qa import QA_DATASETS, check_qa, generative, supported_qa

TaskKind = Literal["classify", "instruct", "qa", "itm", "vqa", "detect"]
DECODER_FAMILIES = ("llama",)


def task_kind(cfg: ExperimentConfig, spec: ModelSpec | None = None) -> TaskKind:
    """The configured task, with ``auto`` resolved from the model's family."""
    if cfg.model.task != "auto":
        return cfg.model.task
    if cfg.data.dataset in QA_DATASETS:
        return "qa"
    spec = spec or get_model_spec(cfg.model.name)
    if spec.family == FAMILY["vqa"]:
        return "vqa"
    if spec.family in DETECTION_FAMILIES or cfg.data.dataset in DETECTION_DATASETS:
        return "detect"
    if spec.family == FAMILY["itm"] and cfg.data.dataset in PAIR_DATASETS:
        return "itm"
    return "instruct" if spec.family in DECODER_FAMILIES else "classify"


def head_kind(kind: TaskKind, spec: ModelSpec) -> tuple[bool, bool]:
    """``(causal_lm, span)`` for a task: a causal LM (instruction tuning, or generative QA on
    a decoder) or a span head (extractive QA); neither means a classifier head."""
    causal_lm = kind == "instruct" or (kind == "qa" and generative(spec))
    return causal_lm, kind == "qa" and not causal_lm


def supported_pairs() -> str:
    """Every supported (task, family, method) combination, in one sentence."""
    return (
        f"classify: any family with any method ({', '.join(method_names())}); "
        f"instruct: {', '.join(DECODER_FAMILIES)} with {', '.join(method_names(causal_lm=True))}; "
        f"{supported_qa()}; {supported_image_text()}; {supported_detection()}"
    )


def check_task(cfg: ExperimentConfig) -> TaskKind:
    """Refuses an unsupported model × task × method combination, naming what is supported.

    Hub models of unknown family pass here; their config is checked when it loads.
    """
    spec = get_model_spec(cfg.model.name)
    kind = task_kind(cfg, spec)
    if kind == "qa":
        check_qa(cfg, spec)
        return kind
    if kind in PAIR_TASKS:
        check_pair_task(cfg, spec, kind)
        return kind
    if kind == DETECT_TASK:
        check_detect(cfg, spec)
        return kind
    if cfg.data.dataset in DETECTION_DATASETS or spec.family in DETECTION_FAMILIES:
        raise FedpeftError(
            f"`model.task` {kind!r} with `{spec.name}` on {cfg.data.dataset!r} is not "
            f"offered; {supported_detection()}."
        )
    if cfg.data.dataset in QA_DATASETS:
        raise FedpeftError(
            f"`data.dataset` {cfg.data.dataset!r} holds questions with answer spans, which "
            f"`model.task` {kind!r} cannot train on; use `model.task = 'qa'` (or 'auto')."
        )
    if cfg.data.dataset in PAIR_DATASETS or spec.family == FAMILY["vqa"]:
        raise FedpeftError(
            f"`model.task` {kind!r} with `{spec.name}` on {cfg.data.dataset!r} is not "
            f"offered; image–text tasks: {supported_image_text()}."
        )
    if kind != "instruct":
        return kind
    if spec.family not in (*DECODER_FAMILIES, "auto"):
        raise FedpeftError(
            f"`model.task` 'instruct' needs a decoder LLM, but `{spec.name}` is a "
            f"{spec.family} encoder; supported: {supported_pairs()}."
        )
    if cfg.peft.method not in method_names(causal_lm=True):
        raise FedpeftError(
            f"`peft.method` {cfg.peft.method!r} is not offered for `model.task` 'instruct' "
            f"(a causal LM's head is its tied embedding matrix and LLaMA has no biases); "
            f"supported: {supported_pairs()}."
        )
    return kind


def instruct_splits(
    cfg: ExperimentConfig, dataset: RawDataset, spec: ModelSpec
) -> tuple[InstructSplit, InstructSplit]:
    """Train and eval splits phrased as instructions, tokenised once."""
    check_label_words(dataset.label_names, dataset.source)
    tokenizer = load_tokenizer(spec)
    max_length = cfg.model.max_length

    def build(split: str) -> InstructSplit:
        raw = dataset.train if split == "train" else dataset.eval
        if not isinstance(raw, RawSplit):
            raise FedpeftError(f"dataset {dataset.name!r} holds images; instruct needs text.")
        return tokenize_instruct(raw, tokenizer, dataset.name, dataset.label_names, max_length)

    return build("train"), build("eval")
