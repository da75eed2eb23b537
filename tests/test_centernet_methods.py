"""Contract tests for the CenterNet detector on an EfficientNet-Lite trunk × the methods
offered for ``detect`` on its family (tiny random trunk): exact parameter, byte and FLOP
predictions, gradients, state round trips, saved adapters that reload, and Lite0's real
structure predicted exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedpeft.models import get_model_spec, load_detector
from fedpeft.models.lite_detect import (
    CENTERNET_FAMILY,
    TINY_CENTERNET,
    build_centernet,
    centernet_config,
)
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
OPTIONS: dict[str, dict[str, object]] = {
    "lora": {"r": 4, "rank_pattern": {"_project_conv": 2}},
    "dora": {"r": 2},
}
METHODS = offered(CENTERNET_FAMILY)
SIDE = 64


def _base() -> torch.nn.Module:
    return load_detector(get_model_spec(TINY_CENTERNET), LABELS, 0, ["a", "b", "c"], SIDE)


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
                "class_labels": torch.tensor([i % LABELS, (i + 1) % LABELS]),
                "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.2, 0.7, 0.1, 0.15]]),
            }
            for i in range(n)
        ]
    return inputs


def _outputs(model: torch.nn.Module, inputs: dict[str, object]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.heatmap


def test_offered_methods_adapt_the_trunk_or_its_biases() -> None:
    assert {"lora", "bitfit", "head", "full"} <= set(METHODS)
    assert not {"prompt", "prefix", "houlsby", "ia3"} & set(METHODS)


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
def test_real_lite0_detector_structure_is_predicted_exactly(method: str) -> None:
    """Lite0's full trunk (random weights: the structure is what is counted) at 320 px."""
    config = centernet_config(False, LABELS, 320)
    model = build_centernet(config, pretrained=False)
    arch = architecture(config, LABELS)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("detection_head."))
    assert arch.head_params == head
    spec = parse_spec(method, OPTIONS.get(method, {}))
    adapted = spec.apply(model, arch)
    assert spec.trainable_params(arch) == sum(
        p.numel() for p in adapted.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("method", METHODS)
def test_the_head_trains_and_the_trunk_only_as_the_method_says(method: str) -> None:
    _, model = _build(method)
    model.train()
    model(**_inputs(labels=True)).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for branch in ("lateral", "heatmap", "size", "offset"):
        assert any("detection_head." in n and f".{branch}." in n for n in trainable), branch
    trunk = [n for n in trainable if "backbone." in n]
    assert bool(trunk) == (method != "head")
    if method in ("lora", "dora"):
        assert all("lora_" in n or "magnitude" in n for n in trunk)
    if method == "bitfit":
        assert all(n.endswith(".bias") for n in trunk)


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
    """The export loads onto a fresh detector: plain PEFT for LoRA/DoRA (the head in
    ``modules_to_save``), fedpeft's loader for the selective methods."""
    spec = parse_spec(method, OPTIONS.get(method, {}))
    check_export_reloads(
        _build(method)[1], TINY_CENTERNET, method, spec, _base,
        lambda m: _outputs(m, _inputs(seed=1)), tmp_path / "adapter",
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_predicted_extra_flops_match_a_flop_counter(method: str) -> None:
    """One image at ``SIDE``: LoRA's 1×1 convolutions run at every position of their map."""
    base, model = _build(method)
    arch = architecture(replace(base.config, image_size=SIDE), LABELS)
    measured = flops(model, _inputs(n=1)) - flops(base, _inputs(n=1))
    predicted = parse_spec(method, OPTIONS.get(method, {})).extra_flops(arch, seq_len=1)
    assert measured == predicted
    if method == "lora":
        assert predicted > 0


def test_head_lr_reaches_the_detection_head() -> None:
    """``client.head_lr`` puts the pyramid and branches in its group, the adapters not."""
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
    assert in_head and all("detection_head" in n for n in in_head)
    assert in_rest and all("lora_" in n for n in in_rest)
    assert len(in_head) + len(in_rest) == len(params)
