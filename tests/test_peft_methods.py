"""Contract tests: every registered PEFT method × every encoder family (tiny configs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from fedpeft.errors import FedpeftError
from fedpeft.peft import (
    get_adapter_state,
    load_adapter,
    method_names,
    model_architecture,
    parse_spec,
    save_adapter,
    set_adapter_state,
)

LABELS = 3
DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _bert() -> PreTrainedModel:
    config = BertConfig(vocab_size=100, max_position_embeddings=64, num_labels=LABELS, **DIMS)
    config._attn_implementation = "eager"  # attention as plain matmuls, which FLOP counters see
    return BertForSequenceClassification(config)


def _roberta() -> PreTrainedModel:
    config = RobertaConfig(vocab_size=100, max_position_embeddings=70, num_labels=LABELS, **DIMS)
    config._attn_implementation = "eager"
    return RobertaForSequenceClassification(config)


FAMILIES: dict[str, Callable[[], PreTrainedModel]] = {"bert": _bert, "roberta": _roberta}
# options that make each method small but non-trivial on the tiny models
OPTIONS: dict[str, dict[str, object]] = {
    "lora": {"r": 4, "rank_pattern": {"value": 2}},
    "prompt": {"num_virtual_tokens": 3},
    "prefix": {"num_virtual_tokens": 3},
    "houlsby": {"size": 8},
    "pfeiffer": {"size": 8, "layers": [1]},
}
ADDITIVE_IDENTITY = {"lora", "houlsby", "pfeiffer", "ia3", "bitfit", "head", "full"}
CASES = [(m, f) for m in method_names() for f in FAMILIES]


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
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(("method", "family"), CASES)
def test_predicted_params_and_bytes_equal_the_real_ones(method: str, family: str) -> None:
    _, model = _build(method, family)
    spec = parse_spec(method, OPTIONS.get(method, {}))
    arch = model_architecture(FAMILIES[family]())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = get_adapter_state(model)
    assert spec.trainable_params(arch) == trainable == sum(t.numel() for t in state.values())
    assert spec.update_bytes(arch) == sum(t.numel() * t.element_size() for t in state.values())
    if method == "full":
        assert trainable == sum(p.numel() for p in FAMILIES[family]().parameters())


@pytest.mark.parametrize(("method", "family"), CASES)
def test_gradients_reach_only_the_trainable_parameters(method: str, family: str) -> None:
    _, model = _build(method, family)
    model.train()
    out = model(**_batch(), labels=torch.tensor([0, 1, 2, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable)  # the head always trains
    if method not in ("full",):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert any("attention.self.query" in n for n in frozen)


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
    assert same == (method in ADDITIVE_IDENTITY)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_one_training_step_changes_the_outputs(method: str, family: str) -> None:
    _, model = _build(method, family)
    batch = _batch()
    before = _logits(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(2):  # LoRA: the first step moves B off zero, the second reaches A's effect
        model(**batch, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
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
    with pytest.raises(FedpeftError, match="expected one of: bitfit, full, head, houlsby"):
        parse_spec("dora", {})
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
