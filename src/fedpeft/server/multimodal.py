"""Image–text tasks as a run's task: what each supports, checked before anything loads, and
their splits.

- ``itm`` — image–text matching with CLIP (``ClipMatcher``): PEFT on both towers, trained
  with CLIP's contrastive loss over the batch, scored by retrieval recall@1/5 in both
  directions (``server/itm.py``). Pairs are an image dataset's images captioned "a photo of
  a {label}." (CIFAR-10, Fashion-MNIST) or DAQUAR's question–image pairs.
- ``vqa`` — visual question answering with ViLT (``ViltForQuestionAnswering``): a head over
  the train answers, scored by exact-answer accuracy (``server/vqa.py``). DAQUAR only.

Both partition like classification (IID, Dirichlet(α) or k classes per client over the
pairs' classes: CIFAR-10's classes, DAQUAR's answers) or ``natural``: whole images per client.
"""

from __future__ import annotations

from typing import Any, cast

from fedpeft.config import ExperimentConfig
from fedpeft.data import RawDataset, is_image_dataset
from fedpeft.data.paired import MatchSplit, VQASplit, pair_split
from fedpeft.data.pairs import ImageTexts, captioned
from fedpeft.data.sources import ImageArrays
from fedpeft.errors import FedpeftError
from fedpeft.models import ModelSpec, image_preprocess, load_model_config, load_tokenizer
from fedpeft.peft import methods_for, supported_methods
from fedpeft.peft.spec import Task
from fedpeft.server.qa import check_catalogue

PAIR_TASKS = ("itm", "vqa")
PAIR_DATASETS = ("daquar",)  # image–text pairs (``data.pairs``)
FAMILY = {"itm": "clip", "vqa": "vilt"}
DATASETS = {"itm": "cifar10, fashion_mnist (class-name captions) or daquar", "vqa": "daquar"}


def offered(kind: str) -> list[str]:
    """The methods offered for ``kind`` on its family."""
    allowed = methods_for(cast(Task, kind))
    return [m for m in supported_methods(FAMILY[kind]) if m in allowed]


def supported_pairs() -> str:
    return "; ".join(
        f"{kind}: {FAMILY[kind]} models on {DATASETS[kind]} with {', '.join(offered(kind))}"
        for kind in PAIR_TASKS
    )


def check_pair_task(cfg: ExperimentConfig, spec: ModelSpec, kind: str) -> None:
    """Refuses, before anything loads, what image–text matching or VQA does not support."""
    task = f"`model.task` {kind!r}"
    if spec.family != FAMILY[kind]:
        what = "an unregistered hub model" if spec.family == "auto" else f"a {spec.family} model"
        raise FedpeftError(
            f"{task} needs a {FAMILY[kind]} model, but `{spec.name}` is {what}; "
            f"supported: {supported_pairs()}."
        )
    dataset = cfg.data.dataset
    if not (dataset in PAIR_DATASETS or (kind == "itm" and is_image_dataset(dataset))):
        raise FedpeftError(
            f"{task} needs image–text data, but `data.dataset` is {dataset!r}; use "
            f"{DATASETS[kind]}."
        )
    if cfg.peft.method not in offered(kind):
        raise FedpeftError(
            f"`peft.method` {cfg.peft.method!r} is not offered for {task}; supported: "
            f"{supported_pairs()}."
        )
    allowed = offered(kind)
    check_catalogue(cfg, allowed, kind, ", ".join(allowed))
    if kind == "itm" and cfg.privacy.mode == "dpsgd":
        raise FedpeftError(
            "`privacy.mode = 'dpsgd'` bounds each example's gradient, but the contrastive loss "
            "of `model.task = 'itm'` couples the examples of a batch; use 'central' or 'local'."
        )


def pair_splits(
    cfg: ExperimentConfig, dataset: RawDataset, spec: ModelSpec, kind: str
) -> tuple[MatchSplit, MatchSplit] | tuple[VQASplit, VQASplit]:
    """Train and eval pairs, images resized and texts tokenised once."""
    config = pair_model_config(spec)
    tokenizer = load_tokenizer(spec)
    preprocess = image_preprocess(spec, cfg.model.image_size)
    if kind == "vqa":
        positions, extra = config.max_position_embeddings, _image_tokens(config, preprocess.size)
    else:
        positions, extra = config.text_config.max_position_embeddings, 0
    length = min(cfg.model.max_length, positions)
    labels = dataset.num_labels if kind == "vqa" else None

    def build(raw: object) -> Any:
        pairs = captioned(raw, dataset.label_names) if isinstance(raw, ImageArrays) else raw
        if not isinstance(pairs, ImageTexts):
            raise FedpeftError(
                f"dataset {dataset.name!r} holds no images for `model.task` {kind!r}."
            )
        return pair_split(pairs, tokenizer, length, preprocess, labels, extra)

    return build(dataset.train), build(dataset.eval)


def _image_tokens(config: Any, size: int) -> int:
    from fedpeft.models.vilt import image_tokens

    return image_tokens(config, size)


def pair_model_config(spec: ModelSpec, num_labels: int = 2) -> Any:
    """The model's ``transformers`` config, without weights (tiny: the tiny one)."""
    from fedpeft.models.vision import is_tiny

    if not is_tiny(spec):
        return load_model_config(spec, num_labels)
    if spec.family == "vilt":
        from fedpeft.models.vilt import tiny_vilt_config

        return tiny_vilt_config(num_labels)
    from fedpeft.models.clip import tiny_clip_config

    return tiny_clip_config(30522, 101, 102, 0)  # only its shape is read here
