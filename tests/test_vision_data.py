"""Image datasets (CIFAR-10, Fashion-MNIST from ../shared/data), image batches, config
refusals, and ``fedpeft run`` end to end on a tiny EfficientNet-Lite and a tiny ViT."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.config import DataConfig
from fedpeft.data import ImageArrays, ImagePreprocess, image_split, load_dataset
from fedpeft.data.images import read_idx
from fedpeft.data.sources import find_local
from fedpeft.errors import FedpeftError
from fedpeft.peft import load_adapter
from fedpeft.runtime.local import run_local
from fedpeft.server.config_checks import check_names
from fedpeft.server.evaluate import evaluate_model
from fedpeft.server.task import build_data, load_base
from tests.conftest import tiny_config

needs_cifar = pytest.mark.skipif(
    find_local("cifar10", ["cifar10_jpg.zip"]) is None, reason="CIFAR-10 not in a data folder"
)
needs_fmnist = pytest.mark.skipif(
    find_local("fashion_mnist", ["train-images-idx3-ubyte.gz"]) is None,
    reason="Fashion-MNIST not in a data folder",
)


@needs_fmnist
def test_fashion_mnist_has_its_official_sizes_and_balanced_classes() -> None:
    ds = load_dataset(DataConfig(dataset="fashion_mnist", train_size=None), 0)
    assert ds.train.images.shape == (60000, 28, 28, 1) and len(ds.eval) == 10000
    assert ds.train.images.dtype == np.uint8
    assert (np.bincount(ds.train.labels) == 6000).all()
    assert (np.bincount(ds.eval.labels) == 1000).all()
    assert ds.label_names[9] == "Ankle boot"


@needs_cifar
def test_cifar10_has_its_official_sizes_and_channel_means() -> None:
    ds = load_dataset(DataConfig(dataset="cifar10", train_size=None), 0)
    assert ds.train.images.shape == (50000, 32, 32, 3) and len(ds.eval) == 10000
    assert (np.bincount(ds.train.labels) == 5000).all()
    mean = np.asarray(ds.train.images, dtype=np.float64).mean(axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-4)  # SOURCE.txt
    assert ds.label_names == sorted(ds.label_names)  # folder order = CIFAR-10's label ids


@needs_cifar
def test_subsets_are_seeded_and_balanced_enough_to_partition() -> None:
    cfg = DataConfig(dataset="cifar10", train_size=300, eval_size=100)
    a, b = load_dataset(cfg, 1), load_dataset(cfg, 1)
    assert np.array_equal(a.train.images, b.train.images) and len(a.eval) == 100
    assert not np.array_equal(load_dataset(cfg, 2).train.labels, a.train.labels)
    assert len(np.unique(a.train.labels)) == 10


def test_idx_reader_refuses_a_file_that_is_not_idx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"not an idx file at all"))
    with pytest.raises(FedpeftError, match="IDX"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01"))
    with pytest.raises(FedpeftError, match="header says"):
        read_idx(short)


def test_image_batches_resize_normalise_and_make_grayscale_rgb() -> None:
    images = np.full((6, 28, 28, 1), 255, dtype=np.uint8)
    images[:, :, :14] = 0  # left half black
    split = image_split(
        ImageArrays(images, np.arange(6) % 2), ImagePreprocess(56, (0.5,) * 3, (0.25,) * 3)
    )
    batch = split.collate(np.asarray([0, 3]))
    assert batch.pixel_values.shape == (2, 3, 56, 56) and batch.labels.tolist() == [0, 1]
    x = batch.pixel_values
    assert torch.allclose(x[:, :, :, :20], torch.tensor(-2.0))  # (0 − 0.5) / 0.25
    assert torch.allclose(x[:, :, :, 36:], torch.tensor(2.0))  # (1 − 0.5) / 0.25
    assert torch.equal(x[:, 0], x[:, 2])  # gray → the same value in every channel
    flipped = split.collate(np.asarray([0]), flip=np.asarray([True])).pixel_values
    assert torch.equal(flipped, x[:1].flip(-1))


def test_training_batches_visit_each_example_once_in_a_seeded_order() -> None:
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    split = image_split(ImageArrays(images, np.arange(10)), ImagePreprocess(4, (0,) * 3, (1,) * 3))
    idx = np.asarray([1, 3, 4, 8, 9])

    def order(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(v) for b in split.train_batches(idx, 2, rng) for v in b.labels]

    assert sorted(order(0)) == idx.tolist() and order(0) == order(0) != order(1)
    assert [len(b) for _, b in split.eval_batches(4)] == [4, 4, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.name=tiny-efficientnet", "peft.method=prompt"],
            "supported: bitfit, dora, full, head, lora.",
        ),
        (
            ["model.name=tiny-vit", "peft.method=prefix"],
            "supported: bitfit, dora, federa, flora, full, head, houlsby, ia3, lora, pfeiffer, "
            "slora, sparse, vera.",
        ),
        (
            ["model.name=tiny-clip", "peft.method=bitfit"],
            "supported: dora, federa, flora, lora, prompt, vera.",
        ),
        (["model.name=tiny-efficientnet", "data.dataset=sst2"], "takes images"),
        (["model.name=tiny-bert", "data.dataset=cifar10"], "takes text"),
        (["model.name=tiny-vit", "data.dataset=cifar10", "model.image_size=64"], "32×32"),
    ],
)
def test_unsupported_configs_are_refused_up_front(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    dataset = [] if any("data.dataset" in o for o in overrides) else ["data.dataset=cifar10"]
    with pytest.raises(FedpeftError, match=message):
        check_names(tiny_config(tmp_path, *dataset, *overrides))


@needs_cifar
@needs_fmnist
@pytest.mark.parametrize(
    ("model", "method", "dataset"),
    [
        ("tiny-efficientnet", "lora", "cifar10"),
        ("tiny-efficientnet", "bitfit", "fashion_mnist"),
        ("tiny-vit", "houlsby", "cifar10"),
        ("tiny-clip", "prompt", "cifar10"),
    ],
)
def test_fedpeft_run_end_to_end(tmp_path: Path, model: str, method: str, dataset: str) -> None:
    cfg = tiny_config(
        tmp_path,
        f"model.name={model}",
        f"data.dataset={dataset}",
        f"peft.method={method}",
        "data.train_size=48",
        "data.eval_size=32",
    )
    result = run_local(cfg)
    rounds = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    # the exported adapter, loaded into a fresh base, scores what the run reported
    data = build_data(cfg)
    base = load_base(cfg, data.spec, data.dataset)
    model = load_adapter(base, result.run_dir / "adapter")
    scores = evaluate_model(model, data.eval, 16, torch.device("cpu"))
    assert scores["accuracy"] == pytest.approx(summary["final_accuracy"])
