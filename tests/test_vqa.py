"""Visual question answering with ViLT on DAQUAR: targets, the accuracy metric, refusals
and a tiny federated run through ``fedpeft run`` (tiny random ViLT)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from typer.testing import CliRunner

from fedpeft.cli.main import app
from fedpeft.config import load_config
from fedpeft.data.images import ImagePreprocess
from fedpeft.data.paired import VQASplit, pair_split
from fedpeft.data.pairs import ImageTexts, answer_vocabulary
from fedpeft.data.sources import find_local
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_tokenizer
from fedpeft.server.vqa import evaluate_vqa

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vilt_vqa.toml"
needs_daquar = pytest.mark.skipif(
    find_local("daquar_subset", ["qa.jsonl"]) is None, reason="DAQUAR subset not in a data folder"
)


def _split(labels: list[int], answers: int = 3) -> VQASplit:
    n = len(labels)
    images = np.random.default_rng(0).integers(0, 255, (n, 6, 6, 3), dtype=np.uint8)
    raw = ImageTexts(images, np.arange(n), [f"what is {i}?" for i in range(n)], np.array(labels))
    tokenizer = load_tokenizer(get_model_spec("tiny-vilt"))
    split = pair_split(raw, tokenizer, 16, ImagePreprocess(8, (0.5,) * 3, (0.5,) * 3), answers, 5)
    assert isinstance(split, VQASplit)
    return split


def test_targets_are_one_hot_and_empty_outside_the_vocabulary() -> None:
    split = _split([2, 0, -1])
    batch = split.collate(np.arange(3))
    assert batch.labels.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
    inputs = batch.model_inputs()
    assert inputs["pixel_mask"].shape == (3, 8, 8) and bool(inputs["pixel_mask"].all())
    assert split.lengths.tolist() == [len(t) + 5 for t in split.input_ids]  # text + image


def test_answer_vocabulary_is_by_frequency_then_alphabetical() -> None:
    assert answer_vocabulary(["b", "a", "c", "b", "a", "d", "b"]) == ["b", "a", "c", "d"]


class _Always(nn.Module):
    """Predicts answer ``k`` for every question; loss 0."""

    def __init__(self, k: int, answers: int) -> None:
        super().__init__()
        self.k, self.answers, self.w = k, answers, nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        logits = torch.zeros(len(input_ids), self.answers)
        logits[:, self.k] = 1.0
        return SequenceClassifierOutput(loss=self.w.sum(), logits=logits)


def test_accuracy_counts_exact_answers_and_unknown_answers_as_wrong() -> None:
    split = _split([1, 1, 0, -1, 1])
    metrics = evaluate_vqa(_Always(1, 3), split, 2, torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["accuracy_in_vocabulary"] == pytest.approx(3 / 4)
    assert metrics["loss"] == 0.0


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["peft.method='prompt'"], "not offered for `model.task` 'vqa'.*vqa: vilt models"),
        (["peft.method='prefix'"], "not offered for `model.task` 'vqa'"),
        (["model.name='tiny-clip'"], "needs a vilt model, but `tiny-clip` is a clip model"),
        (["data.dataset='cifar10'"], "needs image–text data.*use daquar"),
        (["model.task='classify'"], "image–text tasks: itm"),
        (["model.task='itm'"], "needs a clip model"),
        (["server.aggregator='kd_fusion'"], "proxy set"),
        (["data.client_test_fraction=0.2"], "client_test_fraction"),
    ],
)
def test_unsupported_vqa_combinations_are_refused_up_front(sets: list[str], match: str) -> None:
    from fedpeft.server.config_checks import check_names

    with pytest.raises(FedpeftError, match=match):
        check_names(load_config(EXAMPLE, ["model.name='tiny-vilt'", *sets]))


def test_the_example_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedpeft.models.registry as registry
    from fedpeft.server.config_checks import check_names
    from fedpeft.server.instruct import task_kind

    # their hub models (ViLT, CLIP) are refused offline and uncached: here, as if online
    monkeypatch.setattr(registry, "offline_reason", lambda: None)
    for name, kind in (("vilt_vqa.toml", "vqa"), ("clip_itm.toml", "itm")):
        cfg = load_config(EXAMPLE.parent / name)
        check_names(cfg)  # nothing loads
        assert task_kind(cfg) == kind
    auto = load_config(EXAMPLE, ["model.task='auto'"])
    assert task_kind(auto) == "vqa"


@needs_daquar
def test_fedpeft_run_vqa_and_the_adapter_loads_with_plain_peft(tmp_path: Path) -> None:
    """2 clients with Dirichlet-skewed answers × 2 rounds; the exported adapter carries the
    answer vocabulary and loads with plain PEFT onto ViLT, scoring what the run recorded."""
    from peft import PeftModel
    from transformers import AutoConfig, ViltForQuestionAnswering

    from fedpeft.models import load_vqa_model
    from fedpeft.server.task import build_data

    sets = [
        "model.name='tiny-vilt'",
        "data.dataset='daquar'",
        "data.train_size=120",
        "data.eval_size=60",
        "data.num_clients=2",
        "data.partition='dirichlet'",
        "data.alpha=1.0",
        "data.min_partition_size=5",
        "run.rounds=2",
        "run.threads=1",
        "run.autocast='off'",  # re-evaluated in float32 below, to the digit
        "client.batch_size=16",
        f"run.output_dir='{tmp_path}'",
    ]
    result = CliRunner().invoke(app, ["run", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("default-*"))
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = rounds[-1]["eval"]
    assert {"accuracy", "accuracy_in_vocabulary", "loss"} <= final.keys()
    assert 0 <= final["accuracy"] <= final["accuracy_in_vocabulary"] <= 1
    assert 'task = "vqa"' in (run_dir / "config.toml").read_text()  # auto, resolved
    folder = run_dir / "adapter"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["modules_to_save"] == ["classifier"]
    config = AutoConfig.from_pretrained(str(folder))  # the answers travel with the adapter
    assert config.num_labels == 199 and config.id2label[0] == "chair"
    names = [config.id2label[i] for i in range(config.num_labels)]
    base = load_vqa_model(get_model_spec("tiny-vilt"), 199, 0, names)
    assert isinstance(base, ViltForQuestionAnswering)
    model = PeftModel.from_pretrained(base, str(folder))
    data = build_data(load_config(run_dir / "config.toml"))
    assert isinstance(data.eval, VQASplit)
    again = evaluate_vqa(model, data.eval, 64, torch.device("cpu"))
    assert again == pytest.approx(final, rel=1e-4)


@needs_daquar
def test_allocate_prices_the_answer_head(tmp_path: Path) -> None:
    """``fedpeft allocate`` on DAQUAR: ViLT's cost model (with its answer head), no weights."""
    out = tmp_path / "alloc.json"
    sets = ["model.name='tiny-vilt'", "allocation.catalogue.prompt_tokens=[]"]
    args = ["allocate", "-c", str(EXAMPLE), *[x for s in sets for x in ("--set", s)]]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["clients"]) == 4 and all(c["chosen"] for c in record["clients"])


def test_a_missing_daquar_image_is_one_sentence(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fedpeft.data.pairs import load_daquar

    folder = tmp_path / "daquar_subset"
    (folder / "images").mkdir(parents=True)
    row = {"split": "train", "image": "images/image1.png", "question": "what?", "answer": "a"}
    (folder / "qa.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("FEDPEFT_DATA_DIR", str(tmp_path))
    with pytest.raises(FedpeftError, match="image1.png, named in .*qa.jsonl, is not there"):
        load_daquar(load_config(overrides=["data.dataset='daquar'"]).data, 0)


def test_a_daquar_line_nested_too_deep_is_one_sentence(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fedpeft.data.pairs import load_daquar

    folder = tmp_path / "daquar_subset"
    (folder / "images").mkdir(parents=True)
    (folder / "qa.jsonl").write_text("[" * 5000 + "]" * 5000 + "\n")  # beyond json's recursion
    monkeypatch.setenv("FEDPEFT_DATA_DIR", str(tmp_path))
    with pytest.raises(FedpeftError, match="qa.jsonl, line 1: expected a JSON object"):
        load_daquar(load_config(overrides=["data.dataset='daquar'"]).data, 0)


def test_daquar_rows_of_another_split_are_left_out_with_a_warning(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    from PIL import Image

    from fedpeft.data.pairs import load_daquar

    folder = tmp_path / "daquar_subset"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "image1.png")
    rows = [
        {"split": split, "image": "images/image1.png", "question": "what?", "answer": "a"}
        for split in ("train", "test", "val")
    ]
    # a left-out row's image is never read, so its being missing stops nothing
    rows.append({"split": "val", "image": "images/gone.png", "question": "what?", "answer": "a"})
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("FEDPEFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(overrides=["data.dataset='daquar'"]).data
    ds = load_daquar(cfg, 0)
    assert len(ds.train) == len(ds.eval) == 1
    load_daquar(cfg, 0)  # loaded again (the run, then its report): said once
    assert caplog.text.count("2 rows with `split` 'val' are left out") == 1


@pytest.mark.parametrize("answer", [None, "", "  ", ["a"]])
def test_a_daquar_answer_that_is_no_text_is_refused(tmp_path: Path, monkeypatch, answer) -> None:  # type: ignore[no-untyped-def]
    """A null answer was read as the class "None"; an empty one as the class ""."""
    from fedpeft.data.pairs import load_daquar

    folder = tmp_path / "daquar_subset"
    (folder / "images").mkdir(parents=True)
    row = {"split": "train", "image": "images/image1.png", "question": "what?", "answer": answer}
    (folder / "qa.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("FEDPEFT_DATA_DIR", str(tmp_path))
    with pytest.raises(FedpeftError, match=r"qa.jsonl, line 1: .*`answer` is"):
        load_daquar(load_config(overrides=["data.dataset='daquar'"]).data, 0)
