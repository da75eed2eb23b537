"""Contract tests for the image families × their supported PEFT methods (tiny configs), the
exact cost predictions (also on the real EfficientNet-Lite0 structure) and the refusals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTForImageClassification

from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_vision_classifier
from fedpeft.models.vision import (
    EfficientNetLiteConfig,
    build_efficientnet,
    tiny_vit_config,
)
from fedpeft.peft import (
    check_supported,
    get_adapter_state,
    get_method,
    load_adapter,
    method_names,
    model_architecture,
    parse_spec,
    save_adapter,
    supported_methods,
)
from fedpeft.peft.state import without_merged
from tests.contract import check_state_round_trip

LABELS = 3
TINY_EFFNET = EfficientNetLiteConfig(num_labels=LABELS, image_size=32, width=0.25, depth=0.3)


def _efficientnet() -> torch.nn.Module:
    return build_efficientnet(TINY_EFFNET, pretrained=False)


def _vit() -> torch.nn.Module:
    config = tiny_vit_config(LABELS)
    config._attn_implementation = "eager"  # attention as plain matmuls, which FLOP counters see
    return ViTForImageClassification(config)


def _clip() -> torch.nn.Module:
    """Tiny CLIP classifying by the prompts "a photo of a {label}." for three labels."""
    spec = get_model_spec("tiny-clip")
    return load_vision_classifier(spec, LABELS, 0, None, ["cat", "dog", "ship"])


FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {
    "efficientnet": _efficientnet,
    "vit": _vit,
    "clip": _clip,
}
OPTIONS: dict[str, dict[str, object]] = {
    "lora": {"r": 4, "rank_pattern": {"v_proj|_project_conv": 2}},
    "houlsby": {"size": 8},
    "pfeiffer": {"size": 8, "layers": [1]},
}
# CoOp's context initialised from the 4 template tokens ("a photo of a") keeps the logits
FAMILY_OPTIONS = {("prompt", "clip"): {"num_virtual_tokens": 4}}
CASES = [(m, f) for f in FAMILIES for m in supported_methods(f)]
UNSUPPORTED = [(m, f) for f in FAMILIES for m in method_names() if m not in supported_methods(f)]


def _build(method: str, family: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, adapted): the same random base weights, before and after applying the method."""
    torch.manual_seed(seed)
    base = FAMILIES[family]()
    torch.manual_seed(seed)
    fresh = FAMILIES[family]()
    spec = parse_spec(method, _options(method, family))
    torch.manual_seed(seed + 1)
    adapted = spec.apply(fresh, model_architecture(fresh))
    return base.eval(), adapted.eval()


def _options(method: str, family: str) -> dict[str, object]:
    return FAMILY_OPTIONS.get((method, family), OPTIONS.get(method, {}))


def _pixels(seed: int = 0, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _logits(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def test_every_family_has_methods_and_refuses_some() -> None:
    assert {"lora", "bitfit", "head", "full"} <= set(supported_methods("efficientnet"))
    assert {"prompt", "prefix"} & set(supported_methods("efficientnet")) == set()
    assert supported_methods("bert") == method_names()  # text families: every method


@pytest.mark.parametrize(("method", "family"), UNSUPPORTED)
def test_unsupported_pairs_are_refused_with_the_supported_list(method: str, family: str) -> None:
    with pytest.raises(FedpeftError, match=", ".join(supported_methods(family))):
        check_supported(method, family, f"tiny-{family}")


@pytest.mark.parametrize(("method", "family"), CASES)
def test_predicted_params_and_bytes_equal_the_real_ones(method: str, family: str) -> None:
    _, model = _build(method, family)
    spec = parse_spec(method, _options(method, family))
    arch = model_architecture(FAMILIES[family]())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = without_merged(get_adapter_state(model))  # FLoRA's merged sums go down only
    assert spec.trainable_params(arch) == trainable == sum(t.numel() for t in state.values())
    assert spec.update_bytes(arch) == sum(t.numel() * t.element_size() for t in state.values())
    assert arch.total_params == sum(p.numel() for p in FAMILIES[family]().parameters())


@pytest.mark.parametrize("method", supported_methods("efficientnet"))
@pytest.mark.parametrize("options", [{}, {"r": 16, "layers": [0, 5, 15]}])
def test_real_efficientnet_lite0_structure_is_predicted_exactly(
    method: str, options: dict[str, object]
) -> None:
    """The full-size Lite0 (16 blocks), random weights: the closed form must hold at scale."""
    config = EfficientNetLiteConfig(num_labels=10)
    model = build_efficientnet(config, pretrained=False)
    arch = model_architecture(model)
    assert arch.layers == 16 and arch.hidden == 1280
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    spec = parse_spec(method, options if method == "lora" else {})
    adapted = spec.apply(model, arch)
    assert spec.trainable_params(arch) == sum(
        p.numel() for p in adapted.parameters() if p.requires_grad
    )


@pytest.mark.parametrize(("method", "family"), CASES)
def test_gradients_reach_only_the_trainable_parameters(method: str, family: str) -> None:
    _, model = _build(method, family)
    model.train()
    model(pixel_values=_pixels(), labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if family != "clip":  # CLIP has no head: its class prompts are the classifier
        assert any("classifier." in n for n in trainable)  # the head always trains
    if method != "full":
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        first = model_architecture(FAMILIES[family]()).linears[0].name
        assert any(first in n for n in frozen)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_state_round_trips_exactly(method: str, family: str) -> None:
    check_state_round_trip(_build(method, family)[1])


@pytest.mark.parametrize(("method", "family"), CASES)
def test_untrained_method_leaves_outputs_unchanged_where_designed(method: str, family: str) -> None:
    base, model = _build(method, family)
    same = torch.allclose(_logits(base, _pixels()), _logits(model, _pixels()), atol=1e-6)
    assert same == (get_method(method).spec.identity_at_init or (method, family) in FAMILY_OPTIONS)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_one_training_step_changes_the_outputs(method: str, family: str) -> None:
    _, model = _build(method, family)
    before = _logits(model, _pixels())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):  # LoRA: the first step moves B off zero, the second reaches A's effect
        model(pixel_values=_pixels(), labels=torch.tensor([0, 1, 2, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert not torch.allclose(before, _logits(model, _pixels()), atol=1e-5)


def test_batchnorm_statistics_stay_frozen_in_training() -> None:
    """Running statistics are buffers no update carries: training must not move them."""
    _, model = _build("full", "efficientnet")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(pixel_values=_pixels() * 5 + 3, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_saved_adapter_reloads_with_the_same_outputs(
    method: str, family: str, tmp_path: Path
) -> None:
    _, model = _build(method, family)
    g = torch.Generator().manual_seed(5)
    state = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    spec = parse_spec(method, _options(method, family))
    save_adapter(model, state, tmp_path / "adapter", f"tiny-{family}", method, spec)
    torch.manual_seed(0)
    reloaded = load_adapter(FAMILIES[family](), tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(reloaded, _pixels(1)), _logits(model, _pixels(1)))


def _flops(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=pixels)
    return counter.get_total_flops()


@pytest.mark.parametrize(("method", "family"), CASES)
def test_predicted_extra_flops_match_a_flop_counter(method: str, family: str) -> None:
    """The counter sees matrix products and convolutions; IA3's scaling reads as 0."""
    base, model = _build(method, family)
    arch = model_architecture(base)
    spec = parse_spec(method, _options(method, family))
    measured = _flops(model, _pixels(n=1)) - _flops(base, _pixels(n=1))
    predicted = spec.extra_flops(arch, seq_len=arch.tokens or 0)
    if method == "ia3":
        assert measured == 0 and predicted > 0
    else:
        assert measured == predicted
    if method == "lora" and family == "efficientnet":
        assert predicted > 0  # LoRA's 1×1 convolutions run at every spatial position


def test_lora_refuses_convolutions_it_cannot_adapt() -> None:
    model = _efficientnet()
    for target in ("_depthwise_conv", "_conv_stem"):
        spec = parse_spec("lora", {"target_modules": [target]})
        with pytest.raises(FedpeftError, match="cannot adapt"):
            spec.apply(model, model_architecture(model))


def test_flops_follow_the_image_size() -> None:
    """LoRA's cost on a CNN scales with the pixels: 4× the area, 4× the added FLOPs."""
    spec = parse_spec("lora", {})
    small = model_architecture(build_efficientnet(TINY_EFFNET, pretrained=False))
    big = model_architecture(build_efficientnet(replace(TINY_EFFNET, image_size=64), False))
    assert spec.extra_flops(big, 0) == 4 * spec.extra_flops(small, 0)
    assert spec.trainable_params(big) == spec.trainable_params(small)


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_recognises_ships() -> None:
    """The packaged ImageNet weights with the model's preprocessing: CIFAR-10 ships, scaled
    to 224 px, land mostly in ImageNet's watercraft classes (chance: ~2%)."""
    import numpy as np

    from fedpeft.config import DataConfig
    from fedpeft.data import image_split, load_dataset
    from fedpeft.models import get_model_spec, image_preprocess
    from fedpeft.models.vision import EFFICIENTNET_LITE0, lite0_weights

    weights = lite0_weights(EFFICIENTNET_LITE0)
    model = build_efficientnet(EfficientNetLiteConfig(num_labels=1000)).eval()
    model.classifier.load_state_dict({"weight": weights["_fc.weight"], "bias": weights["_fc.bias"]})
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items() if not k.startswith("_fc."))
    ds = load_dataset(DataConfig(dataset="cifar10", train_size=10), 0)
    ships = np.flatnonzero(ds.eval.labels == ds.label_names.index("ship"))[:24]
    split = image_split(ds.eval, image_preprocess(get_model_spec(EFFICIENTNET_LITE0), None))
    with torch.no_grad():
        top1 = model(pixel_values=split.collate(ships).pixel_values).logits.argmax(-1)
    # canoe, catamaran, container ship, fireboat, gondola, lifeboat, liner, paddle, pirate
    # ship, schooner, speedboat, submarine, trimaran, wreck, yawl, aircraft carrier,
    # amphibian, drilling platform
    water = {472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 913, 914, 403,
             408, 540}  # fmt: skip
    assert sum(int(t) in water for t in top1) >= 8
