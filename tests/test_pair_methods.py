"""Contract tests for the image–text heads × their offered PEFT methods (tiny configs): CLIP
matching images and texts (``itm``) and ViLT's VQA answer head (``vqa``) — exact parameter,
byte and FLOP predictions, gradients, state round trips, saved adapters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_clip_matcher, load_vqa_model
from fedpeft.peft import (
    get_adapter_state,
    get_method,
    load_adapter,
    model_architecture,
    parse_spec,
    save_adapter,
    set_adapter_state,
)
from fedpeft.peft.state import without_merged
from fedpeft.server.multimodal import offered

ANSWERS = 5


def _itm() -> torch.nn.Module:
    return load_clip_matcher(get_model_spec("tiny-clip"), seed=0)


def _vqa() -> torch.nn.Module:
    names = [f"answer {i}" for i in range(ANSWERS)]
    return load_vqa_model(get_model_spec("tiny-vilt"), ANSWERS, 0, names)


FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {"itm": _itm, "vqa": _vqa}
OPTIONS: dict[str, dict[str, object]] = {
    "lora": {"r": 4, "rank_pattern": {"value|v_proj": 2}},
    "houlsby": {"size": 8},
    "pfeiffer": {"size": 8, "layers": [1]},
}
CASES = [(m, k) for k in FAMILIES for m in offered(k)]
TEXT = 7  # tokens per text below


def _build(method: str, kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, adapted): the same random base weights, before and after applying the method."""
    base = FAMILIES[kind]()
    fresh = FAMILIES[kind]()
    spec = parse_spec(method, OPTIONS.get(method, {}))
    torch.manual_seed(1)
    adapted = spec.apply(fresh, model_architecture(fresh))
    return base.eval(), adapted.eval()


def _inputs(kind: str, n: int = 3, seed: int = 0, labels: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, TEXT), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP]: CLIP's tiny text tower pools at [SEP]
    mask = torch.ones_like(ids)
    pixels = torch.randn(n, 3, 32, 32, generator=g)
    inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    if kind == "vqa":
        inputs |= {"token_type_ids": torch.zeros_like(ids), "pixel_mask": torch.ones(n, 32, 32)}
    if labels and kind == "itm":
        inputs["match"] = torch.eye(n)
    if labels and kind == "vqa":
        inputs["labels"] = torch.nn.functional.one_hot(torch.arange(n) % ANSWERS, ANSWERS).float()
    return inputs


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_predicted_params_and_bytes_equal_the_real_ones(method: str, kind: str) -> None:
    _, model = _build(method, kind)
    spec = parse_spec(method, OPTIONS.get(method, {}))
    arch = model_architecture(FAMILIES[kind]())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = without_merged(get_adapter_state(model))  # FLoRA's merged sums go down only
    assert spec.trainable_params(arch) == trainable == sum(t.numel() for t in state.values())
    assert spec.update_bytes(arch) == sum(t.numel() * t.element_size() for t in state.values())
    assert arch.total_params == sum(p.numel() for p in FAMILIES[kind]().parameters())


def test_both_tasks_offer_lora_and_refuse_what_does_not_fit() -> None:
    assert {"lora", "dora", "vera"} <= set(offered("itm"))
    assert "prompt" not in offered("itm")  # CoOp's context belongs to the class prompts
    assert {"bitfit", "head", "full"} & set(offered("itm")) == set()  # CLIP: not for clip
    assert {"lora", "bitfit", "head", "full"} <= set(offered("vqa"))
    assert "prompt" not in offered("vqa") and "prefix" not in offered("vqa")


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_gradients_reach_only_the_trainable_parameters(method: str, kind: str) -> None:
    _, model = _build(method, kind)
    model.train()
    model(**_inputs(kind, labels=True)).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    arch = model_architecture(FAMILIES[kind]())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if kind == "vqa":  # the answer head always trains; matching has none
        assert any(".classifier." in f".{n}" for n in trainable)
    if method != "full":
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert any(arch.linears[0].name in n for n in frozen)
    if kind == "itm" and method in ("lora", "dora"):  # LoRA on both towers
        assert any("text_model." in n for n in trainable)
        assert any("vision_model." in n for n in trainable)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_state_round_trips_exactly(method: str, kind: str) -> None:
    _, model = _build(method, kind)
    state = get_adapter_state(model)
    g = torch.Generator().manual_seed(3)
    changed = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
    set_adapter_state(model, changed)
    again = get_adapter_state(model)
    assert again.keys() == changed.keys()
    assert all(torch.equal(again[k], changed[k]) for k in changed)
    with pytest.raises(FedpeftError, match="keys the model lacks"):
        set_adapter_state(model, {**changed, "not.a.key": torch.zeros(1)})


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_untrained_method_leaves_outputs_unchanged_where_designed(method: str, kind: str) -> None:
    base, model = _build(method, kind)
    inputs = _inputs(kind)
    same = torch.allclose(_logits(base, inputs), _logits(model, inputs), atol=1e-5)
    assert same == get_method(method).spec.identity_at_init


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_one_training_step_changes_the_outputs(method: str, kind: str) -> None:
    _, model = _build(method, kind)
    inputs = _inputs(kind)
    before = _logits(model, inputs)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):  # LoRA: the first step moves B off zero, the second reaches A's effect
        model(**_inputs(kind, labels=True)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert not torch.allclose(before, _logits(model, inputs), atol=1e-5)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_saved_adapter_reloads_with_the_same_outputs(
    method: str, kind: str, tmp_path: Path
) -> None:
    _, model = _build(method, kind)
    g = torch.Generator().manual_seed(5)
    state = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    spec = parse_spec(method, OPTIONS.get(method, {}))
    save_adapter(model, state, tmp_path / "adapter", f"tiny-{kind}", method, spec)
    reloaded = load_adapter(FAMILIES[kind](), tmp_path / "adapter").eval()
    inputs = _inputs(kind, seed=1)
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(model, inputs))


def _flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_predicted_extra_flops_match_a_flop_counter(method: str, kind: str) -> None:
    """One image and one text of ``TEXT`` tokens: CLIP's text tower runs at the text's
    positions and its vision tower at the patches + [CLS]; ViLT runs at both together."""
    base, model = _build(method, kind)
    arch = model_architecture(base)
    inputs = _inputs(kind, n=1)
    measured = _flops(model, inputs) - _flops(base, inputs)
    seq_len = TEXT + (17 if kind == "vqa" else 0)  # ViLT: 16 patches + [CLS] after the text
    predicted = parse_spec(method, OPTIONS.get(method, {})).extra_flops(arch, seq_len=seq_len)
    if method == "ia3":
        assert measured == 0 and predicted > 0
    else:
        assert measured == predicted
    if method == "lora":
        assert predicted > 0
