"""Contract tests: every registered PEFT method × every model family (tiny configs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
)

from fedpeft.errors import FedpeftError
from fedpeft.peft import (
    get_adapter_state,
    get_method,
    load_adapter,
    method_names,
    methods_for,
    model_architecture,
    parse_spec,
    save_adapter,
    set_adapter_state,
)
from fedpeft.peft.state import without_merged

LABELS = 3
PAD = 0  # the padding id of the test batch (BERT's and the tiny LLaMA's pad token)
DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _bert() -> PreTrainedModel:
    config = BertConfig(vocab_size=100, max_position_embeddings=64, num_labels=LABELS, **DIMS)
    config._attn_implementation = "eager"  # attention as plain matmuls, which FLOP counters see
    return BertForSequenceClassification(config)


def _roberta() -> PreTrainedModel:
    config = RobertaConfig(vocab_size=100, max_position_embeddings=70, num_labels=LABELS, **DIMS)
    config._attn_implementation = "eager"
    return RobertaForSequenceClassification(config)


def _llama() -> PreTrainedModel:
    """Grouped-query attention (4 query heads, 2 key/value heads); the last non-pad token
    is pooled, so the config names a pad id (0, which fills the test batch's padding)."""
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=PAD,
        num_labels=LABELS,
    )
    config._attn_implementation = "eager"
    return LlamaForSequenceClassification(config)


def _llama_lm() -> PreTrainedModel:
    """The same decoder as a causal LM with tied input/output embeddings, as SmolLM2."""
    config = _llama().config
    config.tie_word_embeddings = True
    return LlamaForCausalLM(config)


def _bert_qa() -> PreTrainedModel:
    """The BERT encoder with a span head (extractive QA): no pooler, start/end per token."""
    config = _bert().config
    config.num_labels = 2  # start and end
    return BertForQuestionAnswering(config)


def _roberta_qa() -> PreTrainedModel:
    config = _roberta().config
    config.num_labels = 2
    return RobertaForQuestionAnswering(config)


FAMILIES: dict[str, Callable[[], PreTrainedModel]] = {
    "bert": _bert,
    "roberta": _roberta,
    "llama": _llama,
    "llama_lm": _llama_lm,  # instruction tuning: the causal-LM head
    "bert_qa": _bert_qa,  # extractive question answering: the span head
    "roberta_qa": _roberta_qa,
}
# options that make each method small but non-trivial on the tiny models
OPTIONS: dict[str, dict[str, object]] = {
    "lora": {"r": 4, "rank_pattern": {"value|v_proj": 2}},
    "prompt": {"num_virtual_tokens": 3},
    "prefix": {"num_virtual_tokens": 3},
    "houlsby": {"size": 8},
    "pfeiffer": {"size": 8, "layers": [1]},
}
CASES = [
    (m, f)
    for m in method_names()
    for f in FAMILIES
    if (f != "llama_lm" or m in method_names(causal_lm=True))
    and (not f.endswith("_qa") or m in methods_for("qa"))
]


def _build(method: str, family: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, adapted): the same random base weights, before and after applying the method."""
    torch.manual_seed(seed)
    base = FAMILIES[family]()
    torch.manual_seed(seed)
    fresh = FAMILIES[family]()
    spec = parse_spec(method, OPTIONS.get(method, {}))
    torch.manual_seed(seed + 1)
    adapted = spec.apply(fresh, model_architecture(fresh))
    return base.eval(), adapted.eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = PAD
    return {"input_ids": ids, "attention_mask": mask}


def _targets(family: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Class ids for a classifier; for a causal LM the tokens themselves, -100 on padding;
    for a span head the answer's first and last token."""
    if family.endswith("_qa"):
        return {
            "start_positions": torch.tensor([1, 2, 0, 4]),
            "end_positions": torch.tensor([3, 2, 0, 5]),
        }
    if family != "llama_lm":
        return {"labels": torch.tensor([0, 1, 2, 1])}
    return {"labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Classifier logits, a causal LM's at the input's positions (PEFT's prompt tuning
    returns its soft-prompt positions too, first), or a span head's (start, end) per token."""
    with torch.no_grad():
        out = model(**batch)
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    logits = out.logits
    return logits[:, -batch["input_ids"].shape[1] :] if logits.dim() == 3 else logits


@pytest.mark.parametrize(("method", "family"), CASES)
def test_predicted_params_and_bytes_equal_the_real_ones(method: str, family: str) -> None:
    _, model = _build(method, family)
    spec = parse_spec(method, OPTIONS.get(method, {}))
    arch = model_architecture(FAMILIES[family]())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    full = get_adapter_state(model)
    state = without_merged(full)  # what a client sends back (FLoRA's merged sums go down only)
    assert spec.trainable_params(arch) == trainable == sum(t.numel() for t in state.values())
    assert spec.update_bytes(arch) == sum(t.numel() * t.element_size() for t in state.values())
    merged = sum(t.numel() for k, t in full.items() if k not in state)
    assert merged == (
        sum(lin.d_in * lin.d_out for lin, _ in spec.targets(arch)) if method == "flora" else 0
    )
    if method == "full":
        assert trainable == sum(p.numel() for p in FAMILIES[family]().parameters())


@pytest.mark.parametrize(("method", "family"), CASES)
def test_gradients_reach_only_the_trainable_parameters(method: str, family: str) -> None:
    _, model = _build(method, family)
    model.train()
    batch = _batch()
    out = model(**batch, **_targets(family, batch))
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    arch = model_architecture(FAMILIES[family]())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head = any(f"{arch.head_prefix}." in n for n in trainable)
    # a classifier's head always trains; a causal LM's (tied to the embeddings) never does
    assert head == (family != "llama_lm") or method == "full"
    if method not in ("full",):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert any(arch.linears[0].name in n for n in frozen)  # the first query projection


@pytest.mark.parametrize(("method", "family"), CASES)
def test_state_round_trips_exactly(method: str, family: str) -> None:
    _, model = _build(method, family)
    state = get_adapter_state(model)
    g = torch.Generator().manual_seed(3)
    changed = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
    set_adapter_state(model, changed)
    again = get_adapter_state(model)
    assert again.keys() == changed.keys()
    assert all(torch.equal(again[k], changed[k]) for k in changed)
    with pytest.raises(FedpeftError, match="keys the model lacks"):
        set_adapter_state(model, {**changed, "not.a.key": torch.zeros(1)})


@pytest.mark.parametrize(("method", "family"), CASES)
def test_untrained_method_leaves_outputs_unchanged_where_designed(method: str, family: str) -> None:
    base, model = _build(method, family)
    batch = _batch()
    same = torch.allclose(_logits(base, batch), _logits(model, batch), atol=1e-6)
    assert same == get_method(method).spec.identity_at_init


@pytest.mark.parametrize(("method", "family"), CASES)
def test_one_training_step_changes_the_outputs(method: str, family: str) -> None:
    _, model = _build(method, family)
    batch = _batch()
    before = _logits(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(2):  # LoRA: the first step moves B off zero, the second reaches A's effect
        model(**batch, **_targets(family, batch)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert not torch.allclose(before, _logits(model, batch), atol=1e-5)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_saved_adapter_reloads_with_the_same_outputs(
    method: str, family: str, tmp_path: Path
) -> None:
    _, model = _build(method, family)
    g = torch.Generator().manual_seed(5)
    state = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    spec = parse_spec(method, OPTIONS.get(method, {}))
    save_adapter(model, state, tmp_path / "adapter", family, method, spec)
    torch.manual_seed(0)
    reloaded = load_adapter(FAMILIES[family](), tmp_path / "adapter").eval()
    batch = _batch(1)
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch))


def _flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**batch)
    return counter.get_total_flops()


@pytest.mark.parametrize(("method", "family"), CASES)
def test_predicted_extra_flops_match_a_flop_counter(method: str, family: str) -> None:
    """The counter sees matrix products only, so IA3's elementwise scaling reads as 0."""
    base, model = _build(method, family)
    spec = parse_spec(method, OPTIONS.get(method, {}))
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    measured = _flops(model, batch) - _flops(base, batch)
    predicted = spec.extra_flops(model_architecture(base), seq_len=12)
    if method == "ia3":
        assert measured == 0 and predicted > 0
    else:
        assert measured == predicted


def test_unknown_method_and_bad_options_are_user_errors() -> None:
    with pytest.raises(FedpeftError, match="expected one of: " + ", ".join(method_names())):
        parse_spec("no_such_method", {})
    with pytest.raises(FedpeftError, match="`peft.size`"):
        parse_spec("houlsby", {"size": 0})
    with pytest.raises(FedpeftError, match="matches no projection"):
        _, _ = _build_with("lora", {"target_modules": ["nothing_here"]})


def _build_with(method: str, options: dict[str, object]) -> tuple[object, object]:
    model = _bert()
    return model, parse_spec(method, options).apply(model, model_architecture(model))


def test_more_capacity_costs_more_params_bytes_and_flops() -> None:
    arch = model_architecture(_bert())
    for method, key in (("lora", "r"), ("houlsby", "size"), ("prompt", "num_virtual_tokens")):
        small, big = parse_spec(method, {key: 2}), parse_spec(method, {key: 8})
        assert small.trainable_params(arch) < big.trainable_params(arch)
        assert small.update_bytes(arch) < big.update_bytes(arch)
        assert small.extra_flops(arch, 16) < big.extra_flops(arch, 16)


def _wide_llama() -> PreTrainedModel:
    """Biased projections and a head size that makes the query width (4·16) differ from the
    hidden size (32), so the closed forms cannot lean on ``heads × head_dim == hidden``."""
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        attention_bias=True,
        mlp_bias=True,
        pad_token_id=PAD,
        num_labels=LABELS,
    )
    config._attn_implementation = "eager"
    return LlamaForSequenceClassification(config)


@pytest.mark.parametrize("method", ["full", "bitfit", "ia3", "prefix", "prompt", "houlsby"])
def test_llama_with_biases_and_wide_heads_is_predicted_exactly(method: str) -> None:
    torch.manual_seed(0)
    base = _wide_llama().eval()
    arch = model_architecture(base)
    assert arch.attn_dim == 64 and arch.kv_dim == 32
    torch.manual_seed(0)
    fresh = _wide_llama()
    spec = parse_spec(method, OPTIONS.get(method, {}))
    model = spec.apply(fresh, model_architecture(fresh)).eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert spec.trainable_params(arch) == trainable
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    measured = _flops(model, batch) - _flops(base, batch)
    assert measured == (0 if method == "ia3" else spec.extra_flops(arch, seq_len=12))


_PAD_LIMIT = pytest.mark.xfail(
    strict=True,
    reason="known limitation: PEFT puts virtual tokens before a decoder's left padding and "
    "ignores position_ids, so the rotary distance from prompt to text shifts with the pad "
    "count (logits move by ~1e-3); right padding would be worse (the head reads a pad)",
)
PAD_CASES = [
    pytest.param(m, f, marks=_PAD_LIMIT)
    if f.startswith("llama") and m in ("prompt", "prefix")
    else (m, f)
    for m, f in CASES
]


@pytest.mark.parametrize(("method", "family"), PAD_CASES)
def test_padding_does_not_change_an_examples_output(method: str, family: str) -> None:
    """fedpeft pads decoders on the left (their classifier reads the last position) and
    encoders on the right; either way a padded row must match the sequence alone."""
    from fedpeft.data import TokenizedSplit

    _, model = _build(method, family)
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(3, 100, (n,), generator=g).numpy() for n in (9, 5)]
    left = family.startswith("llama")
    split = TokenizedSplit(seqs, np.zeros(2, dtype=np.int64), PAD, np.asarray([9, 5]), left)
    batch = split.collate(np.arange(2))
    padded = _logits(model, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    alone = split.collate(np.asarray([1]))
    single = _logits(model, {"input_ids": alone.input_ids, "attention_mask": alone.attention_mask})
    if family.endswith("_qa"):  # a span head: the 5 real (first) positions' logits
        padded, single = padded[:, :5], single[:, :5]
    elif padded.dim() == 3:  # a causal LM: the 5 real (last) positions' next-token logits
        padded, single = padded[:, -5:], single[:, -5:]
    torch.testing.assert_close(padded[1], single[0], rtol=1e-4, atol=1e-5)
