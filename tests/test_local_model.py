"""`model.name` as a local folder: a user's own checkpoint, saved with ``save_pretrained``.
Its damaged or missing files end with one sentence; the families fedpeft supports run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTModel,
)

from fedpeft.errors import FedpeftError
from fedpeft.models import MINILM_ID, get_model_spec, load_classifier, load_tokenizer
from fedpeft.runtime.local import run_local
from fedpeft.server.config_checks import check_names
from fedpeft.server.instruct import task_kind

_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _bert_folder(root: Path, tokenizer: bool = True) -> Path:
    folder = root / "my-bert"
    tok = load_tokenizer(get_model_spec(MINILM_ID))
    BertModel(BertConfig(vocab_size=len(tok), intermediate_size=37, **_SMALL)).save_pretrained(
        folder
    )
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def _llama_folder(root: Path) -> Path:
    """A LLaMA checkpoint whose config names no pad token (as LLaMA-3's and Mistral's)."""
    folder = root / "my-llama"
    tok = load_tokenizer(get_model_spec("tiny-llama"))
    config = LlamaConfig(
        vocab_size=len(tok), intermediate_size=48, num_key_value_heads=1, eos_token_id=2, **_SMALL
    )
    assert config.pad_token_id is None
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "garbage", "mismatched"])
def test_a_damaged_weights_file_is_one_sentence(tmp_path: Path, damage: str) -> None:
    folder = _bert_folder(tmp_path)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x07" * 1000)
    else:  # weights of another shape than config.json says
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(FedpeftError) as info:
        load_classifier(get_model_spec(str(folder)), 2, seed=0)
    message = str(info.value)
    assert f"model `{folder}` could not be loaded" in message and "\n" not in message
    assert "config.json, weights and tokenizer files" in message


def test_a_damaged_cached_hub_model_is_not_blamed_on_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a hub model loads from the local cache: a damaged copy there says what is
    wrong with it (was: "the hub is offline … check your network access", which cannot help)."""
    import huggingface_hub

    import fedpeft.models.registry as registry

    repo = tmp_path / "hub" / "models--org--my-bert"
    (repo / "snapshots").mkdir(parents=True)
    snapshot = _bert_folder(tmp_path).rename(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(registry, "offline_reason", lambda: "HF_HUB_OFFLINE is set")
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FedpeftError) as info:
        load_classifier(get_model_spec("org/my-bert"), 2, seed=0)
    message = str(info.value)
    assert "SafetensorError" in message and "hub is offline" not in message, message
    assert "local Hugging Face cache did not load: delete it and download it again" in message


def test_a_folder_without_its_tokenizer_is_refused(tmp_path: Path) -> None:
    """transformers builds a tokenizer of special tokens only: every word read as unknown."""
    folder = _bert_folder(tmp_path, tokenizer=False)
    with pytest.raises(FedpeftError, match="has no tokenizer in .*save the model's tokenizer"):
        load_tokenizer(get_model_spec(str(folder)))


def test_a_decoder_without_a_pad_token_trains_and_exports_it(tiny, tmp_path: Path) -> None:
    folder = _llama_folder(tmp_path)
    cfg = tiny(f"model.name={str(folder)!r}", "model.task='classify'", "run.rounds=1")
    result = run_local(cfg)
    assert all(r.get("status") == "ok" for r in _clients(result.run_dir))
    exported = json.loads((result.run_dir / "adapter" / "config.json").read_text())
    assert exported["pad_token_id"] == load_tokenizer(get_model_spec(str(folder))).pad_token_id


def _clients(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "clients.jsonl").read_text().splitlines()]


def test_a_local_llama_is_a_decoder_as_smollm2_is(tiny, tmp_path: Path) -> None:
    """Its config.json's model_type picks the family: instruction tuning by default, and
    its batches padded on the left whatever its tokenizer's side (was: an unknown family,
    a classifier, padded on the tokenizer's side)."""
    folder = _llama_folder(tmp_path)
    assert get_model_spec(str(folder)).family == "llama"
    assert task_kind(tiny(f"model.name={str(folder)!r}")) == "instruct"
    assert get_model_spec(str(_bert_folder(tmp_path))).family == "bert"


@pytest.mark.parametrize("kind", ["distilbert", "vit"])
def test_a_local_folder_of_another_family_is_refused_before_anything_loads(
    tiny, tmp_path: Path, kind: str
) -> None:
    """Refused by the config check, from config.json alone (was: after the data and the
    weights had loaded, and a ViT folder was called a text model)."""
    folder = tmp_path / kind
    if kind == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=37)
        DistilBertModel(config).save_pretrained(folder)
        expected = "cannot be run: model type 'distilbert' has no cost model"
    else:
        ViTModel(
            ViTConfig(image_size=32, patch_size=8, intermediate_size=37, **_SMALL)
        ).save_pretrained(folder)
        expected = "is a local vit folder; image models load by their registered names only"
    (folder / "model.safetensors").write_bytes(b"not read")  # only config.json is read
    with pytest.raises(FedpeftError, match=expected):
        check_names(tiny(f"model.name={str(folder)!r}"))


@pytest.mark.parametrize("name", ["{tmp}/no-such-model", "./no-such-model", "{tmp}/config.json"])
def test_a_path_that_names_no_folder_says_so(tiny, tmp_path: Path, name: str) -> None:
    """Not "not in the local Hugging Face cache and the hub is offline": no hub id is a path."""
    (tmp_path / "config.json").write_text("{}")
    name = name.format(tmp=tmp_path)
    with pytest.raises(
        FedpeftError, match=re.escape(f"model `{name}` names no folder on this machine")
    ):
        check_names(tiny(f"model.name={name!r}"))


def test_a_folder_under_the_home_folder_is_found(tmp_path: Path, monkeypatch) -> None:
    """`model.name = "~/models/my-llama"` names the user's own folder (nothing expanded `~`:
    it was "names no folder on this machine")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = _llama_folder(tmp_path)
    spec = get_model_spec(f"~/{folder.name}")
    assert (spec.hub_id, spec.family) == (str(folder), "llama")


def test_a_pickled_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    """Weights load from safetensors only: a folder holding `pytorch_model.bin` alone is
    refused as one without weights, and the pickle is never opened (here it would raise
    an UnpicklingError)."""
    folder = _bert_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x07" * 1000)
    with pytest.raises(FedpeftError) as info:
        load_classifier(get_model_spec(str(folder)), 2, seed=0)
    message = str(info.value)
    assert f"model `{folder}` could not be loaded" in message and "\n" not in message
    assert "Unpickling" not in message
