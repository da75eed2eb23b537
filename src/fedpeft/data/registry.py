"""Dataset registry: a name → a loader giving train and eval splits with label names."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from fedpeft.config import DataConfig
from fedpeft.data import checks
from fedpeft.data.boxes import DetectionImages, load_bccd, load_coco128
from fedpeft.data.cleaning import register_text_cleaning
from fedpeft.data.labels import label_order, normalize_label
from fedpeft.data.pairs import ImageTexts, load_daquar
from fedpeft.data.questions import QAExamples
from fedpeft.data.sources import (
    ImageArrays,
    RawDataset,
    RawSplit,
    encode_labels,
    find_local,
    hub_dataset,
    read_table,
    read_tsv_rows,
)
from fedpeft.data.squad import load_squad
from fedpeft.errors import FedpeftError

log = logging.getLogger(__name__)

Loader = Callable[[DataConfig, int], RawDataset]
# config, seed, image side, heldout: the loader decodes only what ``drawn_indices`` picks
ImageLoader = Callable[[DataConfig, int, int, bool], RawDataset]
_REGISTRY: dict[str, Loader] = {}
_IMAGE_LOADERS: dict[str, ImageLoader] = {}


def register_dataset(name: str, loader: Loader) -> None:
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is registered twice")
    _REGISTRY[name] = loader


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def register_image_loader(name: str, loader: ImageLoader) -> None:
    """How dataset ``name`` is read for a model that takes images (custom data: a folder
    of class subfolders, or a table of image paths), decoded at the square side given.

    The loader lists its files, applies ``drawn_indices`` to the listing and decodes only
    the images drawn: the seeded subsets (``load_dataset``), or with ``heldout`` the train
    examples outside the subset as its train split and no eval (``heldout_train``)."""
    if name in _IMAGE_LOADERS:
        raise ValueError(f"image loader {name!r} is registered twice")
    _IMAGE_LOADERS[name] = loader


def load_dataset(cfg: DataConfig, seed: int, image_side: int | None = None) -> RawDataset:
    """The configured dataset, with seeded ``train_size``/``eval_size`` subsets applied.

    ``image_side``: the model takes images of this square side (None: it takes text); a
    dataset whose files can hold either (``custom``) is read accordingly, and an image
    loader applies the subsets to its file listing itself (only those images decoded)."""
    check_dataset_name(cfg)
    if image_side is not None and cfg.dataset in _IMAGE_LOADERS:
        ds = _IMAGE_LOADERS[cfg.dataset](cfg, seed, image_side, False)
        _warn_about_splits(cfg, ds)
        return ds
    ds = _REGISTRY[cfg.dataset](cfg, seed)
    rng = np.random.default_rng(seed)
    if cfg.train_file is not None:  # the user's own file: custom, or SQuAD-format QA
        checks.warn_once(log, checks.subset_note(cfg, ds.source, len(ds.train)))
    train = _subset(ds.train, cfg.train_size, rng)
    evaluation = _subset(ds.eval, cfg.eval_size, rng)
    ds = RawDataset(ds.name, train, evaluation, ds.label_names, ds.source)
    _warn_about_splits(cfg, ds)
    return ds


def _warn_about_splits(cfg: DataConfig, ds: RawDataset) -> None:
    """The run's final splits of classes: classes it cannot learn, a tiny evaluation set."""
    if isinstance(ds.eval, QAExamples):  # questions: no classes, an exact match in steps
        checks.warn_once(log, checks.small_eval_warning(cfg.eval_file or ds.source, len(ds.eval)))
        return
    if not isinstance(ds.train, RawSplit | ImageArrays):
        return
    if not isinstance(ds.eval, RawSplit | ImageArrays):
        return
    named = cfg.label_names is not None
    eval_source = cfg.eval_file or ds.source  # an eval file's, else the set it was held out of
    checks.warn_once(
        log,
        checks.empty_class_warning(
            ds.source, ds.label_names, ds.train.labels, ds.eval.labels, named
        ),
        checks.small_eval_warning(eval_source, len(ds.eval)),
    )


def heldout_train(
    cfg: DataConfig, seed: int, image_side: int | None = None
) -> RawSplit | ImageArrays:
    """The train split's examples outside the seeded ``train_size`` subset, in file order:
    the same distribution as the run's training data, never trained on (membership audits'
    non-members). Empty when the run used the whole train split."""
    check_dataset_name(cfg)
    if image_side is not None and cfg.dataset in _IMAGE_LOADERS:
        held = _IMAGE_LOADERS[cfg.dataset](cfg, seed, image_side, True).train
        assert isinstance(held, ImageArrays)  # an image loader gives images
        return held
    ds = _REGISTRY[cfg.dataset](cfg, seed)
    if isinstance(ds.train, QAExamples | ImageTexts | DetectionImages):
        raise FedpeftError(
            f"dataset {cfg.dataset!r} holds questions, image–text pairs or boxes; membership "
            "audits score classification runs only."
        )
    return ds.train.take(drawn_indices(cfg, seed, len(ds.train), 0, heldout=True)[0])


def drawn_indices(
    cfg: DataConfig, seed: int, n_train: int, n_eval: int, heldout: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``n_train`` train and ``n_eval`` eval examples a run uses, sorted: the
    seeded ``train_size`` and ``eval_size`` subsets, ``load_dataset``'s very draws (one
    generator seeded with ``seed``, train first, no draw for a size that covers its
    split). With ``heldout``: the train examples outside the subset, and no eval ones."""
    rng = np.random.default_rng(seed)
    train = _subset_indices(n_train, cfg.train_size, rng)
    if heldout:
        return np.setdiff1d(np.arange(n_train), train), np.arange(0)
    return train, _subset_indices(n_eval, cfg.eval_size, rng)


def check_dataset_name(cfg: DataConfig) -> None:
    """Refuses a ``data.dataset`` no loader is registered for, naming those that are."""
    if cfg.dataset not in _REGISTRY:
        raise FedpeftError(
            f"`data.dataset` is {cfg.dataset!r}, which is not a known dataset; "
            f"expected one of: {', '.join(dataset_names())}."
        )


Raw = RawSplit | ImageArrays | QAExamples | ImageTexts | DetectionImages


def _subset(split: Raw, size: int | None, rng: np.random.Generator) -> Raw:
    if size is None or size >= len(split):
        return split  # the whole split, not a copy
    return split.take(_subset_indices(len(split), size, rng))


def _subset_indices(n: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """A seeded, sorted subset of ``size`` of ``range(n)`` (all of it, with no draw, when
    ``size`` is None or ≥ n)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


sst2_text = register_text_cleaning("sst2", str.strip)


def _sst2(cfg: DataConfig, seed: int) -> RawDataset:
    names = ["negative", "positive"]
    folder = find_local("sst2", ["train.tsv", "dev.tsv"])
    if folder is None:
        train = hub_dataset("glue", "sst2", "train", "sentence", "label")
        dev = hub_dataset("glue", "sst2", "validation", "sentence", "label")
        return RawDataset("sst2", train, dev, names, "hub:glue/sst2")

    def split(file: str) -> RawSplit:
        rows = read_tsv_rows(folder / file, header=True)
        texts = [sst2_text(r[0]) for r in rows]
        return RawSplit(texts, np.asarray([int(r[1]) for r in rows]))

    return RawDataset("sst2", split("train.tsv"), split("dev.tsv"), names, str(folder))


_AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def ag_news_text(text: str) -> str:
    """AG News marks line breaks in its texts with ``\\``: a space."""
    return text.replace("\\", " ")


register_text_cleaning("ag_news", ag_news_text)


def _ag_news(cfg: DataConfig, seed: int) -> RawDataset:
    folder = find_local("ag_news", ["train_subset_10k.tsv", "test.tsv"])
    if folder is None:
        train = hub_dataset("ag_news", None, "train", "text", "label")
        test = hub_dataset("ag_news", None, "test", "text", "label")
        return RawDataset("ag_news", train, test, _AG_NEWS_LABELS, "hub:ag_news")

    def split(file: str) -> RawSplit:
        rows = read_tsv_rows(folder / file, header=False)
        labels = encode_labels([r[1] for r in rows], _AG_NEWS_LABELS, str(folder / file))
        return RawSplit([ag_news_text(r[0]) for r in rows], labels)

    return RawDataset(
        "ag_news", split("train_subset_10k.tsv"), split("test.tsv"), _AG_NEWS_LABELS, str(folder)
    )


def _custom(cfg: DataConfig, seed: int) -> RawDataset:
    """Bring your own CSV/TSV/JSONL; without an eval file, a seeded 10% is held out.

    Classes are ``data.label_names`` in that order when given (every label must be one of
    them), else the distinct train labels in ``label_order`` (numeric when all are numbers)."""
    from pathlib import Path

    assert cfg.train_file is not None  # checked by DataConfig
    train_path = Path(cfg.train_file)
    texts, raw = read_table(train_path, cfg.text_column, cfg.label_column)
    names = class_names(cfg, raw, train_path)
    train = RawSplit(texts, encode_labels(raw, names, str(train_path)))
    if cfg.eval_file is not None:
        eval_texts, eval_raw = read_table(Path(cfg.eval_file), cfg.text_column, cfg.label_column)
        evaluation = RawSplit(eval_texts, encode_labels(eval_raw, names, cfg.eval_file))
        where = f"data file {cfg.eval_file}"
    else:
        held, kept = held_out_tenth(len(texts), seed)
        evaluation, train = train.take(held), train.take(kept)
        where = f"the tenth held out of {train_path}"
    checks.warn_once(
        log,
        checks.duplicate_warning(train_path, texts, raw),
        checks.leakage_warning(train.texts, evaluation.texts, where),
    )
    return RawDataset(train_path.stem, train, evaluation, names, str(train_path))


def held_out_tenth(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Custom data without an eval file: a seeded 10 % (at least one example) held out for
    evaluation, and the rest; both sorted (file order). Drawn over rows, as every earlier
    run drew it (a resumed run must see its own split): rows that repeat a text may fall on
    both sides, which ``checks.leakage_warning`` says."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = max(1, n // 10)
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def class_names(cfg: DataConfig, raw: list[str], path: object) -> list[str]:
    """``data.label_names`` (canonical, each once), else the distinct ``raw`` labels in
    ``label_order``; fewer than 2 classes are refused."""
    if cfg.label_names is not None:
        names = [normalize_label(n, "`data.label_names`") or "" for n in cfg.label_names]
        if len(set(names)) != len(names) or "" in names:
            raise FedpeftError(
                f"`data.label_names` {cfg.label_names} name a class twice or an empty class; "
                "give each class once."
            )
        return names
    names = label_order(set(raw))
    if len(names) < 2:
        raise FedpeftError(f"data file {path} has {len(names)} distinct label(s); need 2 or more.")
    if len(names) > 10 and 2 * len(names) > len(raw):  # e.g. a score or an id column
        checks.warn_once(
            log,
            f"data file {path} has {len(names)} distinct labels in {len(raw)} rows, fewer "
            f"than 2 examples a class; each distinct value of `data.label_column` "
            f"({cfg.label_column}) is a class: check it names classes",
        )
    checks.warn_once(log, checks.case_warning(path, names))
    return names


register_dataset("sst2", _sst2)
register_dataset("ag_news", _ag_news)
register_dataset("custom", _custom)
register_dataset("squad", load_squad)
register_dataset("daquar", load_daquar)
register_dataset("bccd", load_bccd)
register_dataset("coco128", load_coco128)
