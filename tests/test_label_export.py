"""An adapter trained on 6 TREC classes loads with plain transformers + peft and names its
labels; the run's report explains the run (config, per-class table, confusion plot)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForSequenceClassification

from fedpeft.data import load_dataset, tokenize_split
from fedpeft.data.text_sets import TREC_COARSE
from fedpeft.models import MINILM_ID, get_model_spec, load_tokenizer
from fedpeft.report import write_report
from fedpeft.runtime.local import run_local
from fedpeft.server.classes import evaluate_run, read_class_report
from fedpeft.server.evaluate import predict_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trec_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import tiny_config

    tmp = tmp_path_factory.mktemp("trec")
    cfg = tiny_config(
        tmp,
        f"model.name={MINILM_ID!r}",
        "data.dataset='trec'",
        "data.train_size=96",
        "data.eval_size=64",
        "run.rounds=1",
    )
    return cfg, run_local(cfg)


def test_adapter_names_its_labels_with_plain_transformers_and_peft(trec_run) -> None:  # type: ignore[no-untyped-def]
    cfg, result = trec_run
    adapter = result.run_dir / "adapter"
    config = AutoConfig.from_pretrained(str(adapter))
    assert config.num_labels == 6
    assert [config.id2label[i] for i in range(6)] == TREC_COARSE
    assert config.label2id["HUM"] == 3
    base_path = str(get_model_spec(MINILM_ID).local_path())
    base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config)
    model = PeftModel.from_pretrained(base, str(adapter))
    ds = load_dataset(cfg.data, cfg.run.seed)
    split = tokenize_split(ds.eval, load_tokenizer(get_model_spec(MINILM_ID)), 64)
    preds = predict_logits(model, split, 32, torch.device("cpu")).argmax(-1).numpy()
    assert float(np.mean(preds == split.labels)) == pytest.approx(
        result.rounds[-1]["eval"]["accuracy"], abs=1e-9
    )
    names = [model.config.id2label[int(p)] for p in preds]
    assert set(names) <= set(TREC_COARSE)


def test_class_report_and_report_sections(trec_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = trec_run
    report = evaluate_run(result.run_dir)
    assert report is not None and report == read_class_report(result.run_dir)
    assert report.label_names == TREC_COARSE
    assert report.accuracy == pytest.approx(result.rounds[-1]["eval"]["accuracy"], abs=1e-9)
    assert report.macro_f1 == pytest.approx(result.rounds[-1]["eval"]["macro_f1"], abs=1e-9)
    assert sum(report.support) == 64 == int(np.sum(report.confusion))
    # recall from the confusion matrix's rows
    cm = np.asarray(report.confusion)
    rows = cm.sum(1)
    want = np.divide(np.diag(cm), rows, out=np.zeros(6), where=rows > 0)
    assert np.allclose(report.recall, want)
    text = write_report(result.run_dir, reference=result.run_dir).read_text()
    assert "Dirichlet(α = 0.5)" not in text  # the tiny config is IID
    assert "`trec`" in text and "| HUM |" in text and "run − reference (points)" in text
    assert (result.run_dir / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((result.run_dir / "summary.json").read_text())["dataset"] == "trec"
