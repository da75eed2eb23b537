"""Image–text matching with CLIP: the contrastive loss, recall@k, pairs and batches, DAQUAR,
refusals, and tiny federated runs through ``fedpeft run`` (tiny random CLIP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.data.images import ImagePreprocess
from fedpeft.data.paired import MatchSplit, pair_split
from fedpeft.data.pairs import ImageTexts, captioned
from fedpeft.data.sources import ImageArrays
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_tokenizer
from fedpeft.models.clip import matching_loss
from fedpeft.server.itm import recall_at_k

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clip_itm.toml"


def test_matching_loss_is_clips_own_loss_for_one_to_one_pairs() -> None:
    """Against ``CLIPModel(return_loss=True)``: 4 images, each with its own text."""
    from transformers import CLIPModel

    from fedpeft.models.clip import tiny_clip_config

    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config(30522, 101, 102, 0)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (4, 6), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = clip(input_ids=ids, pixel_values=pixels, return_loss=True)
    torch.testing.assert_close(matching_loss(out.logits_per_image, torch.eye(4)), out.loss)


def test_matching_loss_spreads_a_shared_caption_over_its_images() -> None:
    """Two images, one caption: image→text has one choice (loss 0); text→image targets
    ½, ½, so its loss is −½(log p₁ + log p₂) with p the softmax over the two images."""
    logits = torch.tensor([[2.0], [0.5]])
    p = torch.softmax(logits[:, 0], 0)
    expected = (0.0 - 0.5 * (math.log(p[0]) + math.log(p[1]))) / 2
    assert float(matching_loss(logits, torch.ones(2, 1))) == pytest.approx(expected)


def test_recall_at_k_by_hand_with_ties_counted_against_the_model() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.9], [0.3, 0.8, 0.7]])
    relevant = np.array([[True, False, False], [True, False, False], [False, False, True]])
    # ranks of the true items: 0; 2 (0.2 tied with a false 0.2, below 0.9); 1
    assert recall_at_k(scores, relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, relevant, 2) == pytest.approx(2 / 3)
    assert recall_at_k(scores, relevant, 3) == pytest.approx(1.0)
    several = np.array([[False, True, True]])  # any true item within k counts
    assert recall_at_k(np.array([[0.9, 0.1, 0.8]]), several, 1) == 0.0
    assert recall_at_k(np.array([[0.9, 0.1, 0.8]]), several, 2) == 1.0
    assert recall_at_k(np.zeros((1, 3)), several, 1) == 0.0  # a constant model: a tie, lost


def _split(raw: ImageTexts) -> MatchSplit:
    tokenizer = load_tokenizer(get_model_spec("tiny-clip"))
    split = pair_split(raw, tokenizer, 16, ImagePreprocess(8, (0.5,) * 3, (0.5,) * 3))
    assert isinstance(split, MatchSplit)
    return split


def test_batches_hold_each_image_and_caption_once_with_their_pairs() -> None:
    images = np.random.default_rng(0).integers(0, 255, (5, 12, 10, 3), dtype=np.uint8)
    arrays = ImageArrays(images, np.array([2, 0, 2, 1, 0]))
    pairs = captioned(arrays, ["cat", "dog", "ship"])
    assert pairs.texts[0] == "a photo of a ship." and pairs.texts[3] == "a photo of a dog."
    split = _split(pairs)
    assert split.images.shape == (5, 3, 8, 8) and len(split.input_ids) == 3
    batch = split.collate(np.array([0, 1, 2, 4]))
    assert batch.pixel_values.shape[0] == 4 and batch.input_ids.shape[0] == 2  # ship, cat
    assert batch.match.sum() == 4 and len(batch) == 4
    assert (batch.match.sum(1) == 1).all()  # each image has one caption
    # DAQUAR-style: one image with two questions, another with one
    texts = ["q a?", "q b?", "q a?"]
    shared = ImageTexts(images[:2], np.array([0, 0, 1]), texts, np.zeros(3, dtype=np.int64))
    split = _split(shared)
    assert split.relevance().tolist() == [[True, True], [True, False]]
    batch = split.collate(np.arange(3))
    assert batch.match.tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_natural_partition_gives_each_client_whole_images() -> None:
    from fedpeft.config import DataConfig
    from fedpeft.data.paired import partition_pairs

    images = np.zeros((7, 4, 4, 3), dtype=np.uint8)
    owner = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6])
    raw = ImageTexts(images, owner, [f"q{i}?" for i in range(11)], np.zeros(11, dtype=np.int64))
    split = _split(raw)
    cfg = DataConfig(dataset="daquar", num_clients=3, partition="natural")
    parts = partition_pairs(split, cfg, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))  # each pair once
    held = [set(owner[p].tolist()) for p in parts]
    assert sum(len(h) for h in held) == 7 and all(held)  # no image on two clients
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, partition_pairs(split, cfg, 1), strict=True)
    )
    with pytest.raises(FedpeftError, match="whole images"):
        partition_pairs(split, cfg.model_copy(update={"num_clients": 8}), seed=1)


def test_daquar_reads_with_its_counts_and_no_image_names_in_questions() -> None:
    from fedpeft.config import DataConfig
    from fedpeft.data.pairs import load_daquar
    from fedpeft.data.sources import find_local

    if find_local("daquar_subset", ["qa.jsonl"]) is None:
        pytest.skip("DAQUAR subset not in a data folder")
    ds = load_daquar(DataConfig(dataset="daquar"), 0)
    assert isinstance(ds.train, ImageTexts) and isinstance(ds.eval, ImageTexts)
    assert (len(ds.train), len(ds.eval)) == (551, 367)
    assert len(set(ds.train.image.tolist())) == 60 and len(set(ds.eval.image.tolist())) == 40
    assert not set(ds.train.image.tolist()) & set(ds.eval.image.tolist())
    assert not any(any(c.isdigit() for c in t.split("image")[-1]) for t in ds.train.texts)
    assert ds.num_labels == 199 and int((ds.eval.labels >= 0).sum()) == 273
    assert np.asarray(ds.train.images[0]).shape == (425, 560, 3)


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["peft.method='prompt'"], "not offered for `model.task` 'itm'.*itm: clip models"),
        (["peft.method='bitfit'"], "not offered for `model.task` 'itm'"),
        (["model.name='tiny-vit'"], "needs a clip model, but `tiny-vit` is a vit model"),
        (["model.name='some/unknown-model'"], "unregistered hub model|not in the local"),
        (["data.dataset='sst2'"], "needs image–text data"),
        (["privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0"], "couples the examples"),
        (["server.aggregator='layerwise'"], "proxy set"),
        (["model.task='classify'", "data.dataset='daquar'"], "image–text tasks: itm"),
        (["model.task='vqa'"], "needs a vilt model"),
    ],
)
def test_unsupported_itm_combinations_are_refused_up_front(sets: list[str], match: str) -> None:
    from fedpeft.server.config_checks import check_names

    with pytest.raises(FedpeftError, match=match):
        check_names(load_config(EXAMPLE, ["model.name='tiny-clip'", *sets]))


def test_auto_picks_itm_for_clip_on_daquar_and_classify_on_cifar10() -> None:
    from fedpeft.server.instruct import task_kind

    auto = load_config(EXAMPLE, ["model.task='auto'", "model.name='tiny-clip'"])
    assert task_kind(auto) == "classify"
    daquar = auto.data.model_copy(update={"dataset": "daquar"})
    assert task_kind(auto.model_copy(update={"data": daquar})) == "itm"


def _run(tmp_path: Path, sets: list[str]) -> Path:
    base = [
        "model.name='tiny-clip'",
        "model.task='itm'",
        "data.num_clients=2",
        "run.rounds=2",
        "run.threads=1",
        "run.autocast='off'",  # re-evaluated in float32 below, to the digit
        "client.batch_size=16",
        "client.lr=1e-3",
        f"run.output_dir='{tmp_path}'",
    ]
    result = CliRunner().invoke(app, ["run", *[x for s in [*base, *sets] for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return next(tmp_path.glob("default-*"))


def test_fedpeft_run_itm_on_cifar10_and_the_adapter_loads_on_a_stock_clip(tmp_path: Path) -> None:
    """2 clients × 2 rounds on captioned CIFAR-10; the exported LoRA adapter loads with plain
    PEFT onto transformers' own ``CLIPModel`` and scores what the run recorded."""
    from peft import PeftModel
    from transformers import CLIPModel

    from fedpeft.models import load_clip_matcher
    from fedpeft.server.itm import evaluate_itm
    from fedpeft.server.task import build_data

    sets = ["data.dataset='cifar10'", "data.train_size=64", "data.eval_size=40"]
    run_dir = _run(tmp_path, [*sets, "data.partition='dirichlet'", "data.alpha=1.0"])
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 2
    final = rounds[-1]["eval"]
    keys = {"i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5", "accuracy", "loss"}
    assert keys <= final.keys() and 0 <= final["accuracy"] <= 1
    assert final["accuracy"] == pytest.approx((final["i2t_recall@1"] + final["t2i_recall@1"]) / 2)
    assert final["i2t_recall@5"] >= final["i2t_recall@1"]
    assert 'task = "itm"' in (run_dir / "config.toml").read_text()
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["modules_to_save"] is None
    assert {"q_proj", "v_proj"} == set(adapter["target_modules"])
    matcher = load_clip_matcher(get_model_spec("tiny-clip"), 0)
    ours = PeftModel.from_pretrained(matcher, str(run_dir / "adapter"))
    data = build_data(load_config(run_dir / "config.toml"))
    assert isinstance(data.eval, MatchSplit)
    # the run evaluated in batches of 32 (the CPU default): the contrastive loss is per batch
    again = evaluate_itm(ours, data.eval, 32, torch.device("cpu"))
    assert again == pytest.approx(final, rel=1e-5)
    base = load_clip_matcher(get_model_spec("tiny-clip"), 0)
    stock = CLIPModel(base.config)
    stock.load_state_dict(base.state_dict())
    stock = PeftModel.from_pretrained(stock, str(run_dir / "adapter")).eval()
    batch = data.eval.collate(np.arange(6))
    with torch.no_grad():
        expected = ours(**batch.model_inputs(with_labels=False)).logits
        got = stock(**batch.model_inputs(with_labels=False)).logits_per_image
    torch.testing.assert_close(got, expected)


def test_fedpeft_run_itm_on_daquar_questions_with_whole_images_per_client(tmp_path: Path) -> None:
    from fedpeft.data.sources import find_local

    if find_local("daquar_subset", ["qa.jsonl"]) is None:
        pytest.skip("DAQUAR subset not in a data folder")
    sets = ["data.dataset='daquar'", "data.train_size=80", "data.eval_size=40"]
    run_dir = _run(tmp_path, [*sets, "data.partition='natural'"])
    clients = json.loads((run_dir / "partitions.json").read_text())["clients"]
    assert sum(sum(c["label_histogram"]) for c in clients.values()) == 80  # answer classes
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    assert 0 <= final["t2i_recall@1"] <= final["t2i_recall@5"] <= 1
