"""Contract tests for YOLOS' detection heads × the methods offered for ``detect`` (tiny
random YOLOS): exact parameter, byte and FLOP predictions, gradients, state round trips,
saved adapters loadable with plain PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import YolosConfig, YolosForObjectDetection

from fedpeft.models import get_model_spec, load_detector
from fedpeft.peft import (
    architecture,
    get_adapter_state,
    get_method,
    model_architecture,
    parse_spec,
)
from fedpeft.peft.state import without_merged
from fedpeft.server.detection import offered
from tests.contract import check_export_reloads, check_state_round_trip, flops

LABELS = 3
OPTIONS: dict[str, dict[str, object]] = {"lora": {"r": 4, "rank_pattern": {"value": 2}}}
METHODS = offered()
SIDE = 48  # an input side other than the config's 64: 9 patches, interpolated positions


def _base() -> torch.nn.Module:
    return load_detector(get_model_spec("tiny-yolos"), LABELS, 0, ["a", "b", "c"])


def _build(method: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, adapted): the same random base weights, before and after the method."""
    base, fresh = _base(), _base()
    spec = parse_spec(method, OPTIONS.get(method, {}))
    torch.manual_seed(1)
    return base.eval(), spec.apply(fresh, model_architecture(fresh)).eval()


def _inputs(n: int = 2, seed: int = 0, labels: bool = False) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    inputs: dict[str, object] = {"pixel_values": torch.randn(n, 3, SIDE, SIDE, generator=g)}
    if labels:
        inputs["labels"] = [
            {
                "class_labels": torch.tensor([i % LABELS]),
                "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2]]),
            }
            for i in range(n)
        ]
    return inputs


def _outputs(model: torch.nn.Module, inputs: dict[str, object]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return torch.cat([out.logits, out.pred_boxes], dim=-1)


def test_offered_methods_train_the_backbone_or_its_biases() -> None:
    assert {"lora", "bitfit", "head", "full"} <= set(METHODS)
    assert not {"prompt", "prefix", "houlsby", "ia3"} & set(METHODS)


@pytest.mark.parametrize("mid", [True, False])
def test_total_params_match_the_model_in_both_position_embedding_layouts(mid: bool) -> None:
    """The tiny config (mid-block position embeddings on, as YOLOS-S) and YOLOS-Ti's layout
    (off, a non-square config size, no qkv bias as a variant)."""
    config = YolosConfig(
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=40,
        image_size=[48, 80],
        patch_size=16,
        num_detection_tokens=7,
        use_mid_position_embeddings=mid,
        qkv_bias=mid,
        num_labels=5,
    )
    model = YolosForObjectDetection(config)
    arch = architecture(config, 5)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert arch.bias_params == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and "vit." in n
    )
    head = ("class_labels_classifier.", "bbox_predictor.")
    assert arch.head_params == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(head)
    )
    assert arch.tokens == 1 + 3 * 5 + 7
    assert architecture(config, 5, image_size=SIDE).tokens == 1 + 9 + 7


@pytest.mark.parametrize("method", METHODS)
def test_predicted_params_and_bytes_equal_the_real_ones(method: str) -> None:
    _, model = _build(method)
    spec = parse_spec(method, OPTIONS.get(method, {}))
    arch = model_architecture(_base())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = without_merged(get_adapter_state(model))  # FLoRA's merged sums go down only
    assert spec.trainable_params(arch) == trainable == sum(t.numel() for t in state.values())
    assert spec.update_bytes(arch) == sum(t.numel() * t.element_size() for t in state.values())
    assert arch.total_params == sum(p.numel() for p in _base().parameters())


@pytest.mark.parametrize("method", METHODS)
def test_both_heads_train_and_the_backbone_only_as_the_method_says(method: str) -> None:
    _, model = _build(method)
    model.train()
    model(**_inputs(labels=True)).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("class_labels_classifier." in n for n in trainable)
    assert any("bbox_predictor." in n for n in trainable)
    backbone = [n for n in trainable if "vit." in n]
    assert bool(backbone) == (method != "head")
    if method in ("lora", "dora"):
        assert all("lora_" in n or "magnitude" in n for n in backbone)
    if method == "bitfit":
        assert all(n.endswith(".bias") for n in backbone)


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trips_exactly(method: str) -> None:
    check_state_round_trip(_build(method)[1])


@pytest.mark.parametrize("method", METHODS)
def test_untrained_method_leaves_outputs_unchanged_where_designed(method: str) -> None:
    base, model = _build(method)
    same = torch.allclose(_outputs(base, _inputs()), _outputs(model, _inputs()), atol=1e-5)
    assert same == get_method(method).spec.identity_at_init


@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_reloads_with_the_same_outputs(method: str, tmp_path: Path) -> None:
    """The export loads onto a fresh YOLOS: plain PEFT for LoRA/DoRA (both heads in
    ``modules_to_save``), fedpeft's loader for the selective methods."""
    spec = parse_spec(method, OPTIONS.get(method, {}))
    check_export_reloads(
        _build(method)[1], "tiny-yolos", method, spec, _base,
        lambda m: _outputs(m, _inputs(seed=1)), tmp_path / "adapter",
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_predicted_extra_flops_match_a_flop_counter(method: str) -> None:
    """One image at ``SIDE``: every projection runs at [CLS] + 9 patches + 10 detection
    tokens, the sequence length of the architecture at that input side."""
    base, model = _build(method)
    arch = architecture(base.config, LABELS, image_size=SIDE)
    assert arch.tokens == 20
    measured = flops(model, _inputs(n=1)) - flops(base, _inputs(n=1))
    predicted = parse_spec(method, OPTIONS.get(method, {})).extra_flops(arch, seq_len=arch.tokens)
    assert measured == predicted
    if method == "lora":
        assert predicted > 0


def test_head_lr_reaches_both_detection_heads() -> None:
    """``client.head_lr`` puts the class and box MLPs in its group, the adapters not."""
    from fedpeft.client.train import _param_groups
    from fedpeft.types import TrainInstruction

    _, model = _build("lora")
    params = [p for p in model.parameters() if p.requires_grad]
    ins = TrainInstruction(1, 0, 1, None, 4, 1e-4, 0.0, 0.0, 0, head_lr=1e-2)
    rest, head = _param_groups(model, params, ins)
    names = {id(p): n for n, p in model.named_parameters()}
    in_head = [names[id(p)] for p in head["params"]]
    in_rest = [names[id(p)] for p in rest["params"]]
    assert head["lr"] == 1e-2 and rest["lr"] == 1e-4
    assert any("class_labels_classifier" in n for n in in_head)
    assert any("bbox_predictor" in n for n in in_head)
    assert in_rest and all("lora_" in n for n in in_rest)
    assert len(in_head) + len(in_rest) == len(params)
