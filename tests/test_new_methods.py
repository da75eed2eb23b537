"""DoRA and VeRA beyond the contract tests: the cost terms the contract does not measure
(DoRA's once-per-batch product and its dropout recompute in training, VeRA's shared
projections), and that allocation and the server's groups take them with no edit."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, BertConfig, BertForSequenceClassification

from fedpeft.allocation import CatalogueConfig, build_catalogue, make_candidate, step_flops
from fedpeft.models import get_model_spec
from fedpeft.peft import architecture, get_adapter_state, model_architecture, parse_spec
from fedpeft.server.assign import group_of

DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, max_position_embeddings=64, num_labels=3, **DIMS)
    config._attn_implementation = "eager"
    return BertForSequenceClassification(config)


def _forward_flops(model: torch.nn.Module, batch: int, train: bool) -> int:
    ids = torch.randint(3, 100, (batch, 12), generator=torch.Generator().manual_seed(0))
    model.train(train)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dora_flops_split_into_per_example_and_per_batch(dropout: float) -> None:
    """Counted at batch 3: eval adds 3·(extra − batch part) + batch part; training with
    dropout adds the base projection again (``train_flops``)."""
    spec = parse_spec("dora", {"r": 4, "dropout": dropout})
    base, adapted = _bert(), spec.apply(_bert(), model_architecture(_bert()))
    arch = model_architecture(base)
    per_example = spec.extra_flops(arch, 12) - spec.batch_flops(arch)
    assert spec.batch_flops(arch) == 4 * 2 * 4 * 32 * 64  # 4 projections, 2·r·d·(d + d)
    for train, expected in ((False, per_example), (True, spec.train_flops(arch, 12))):
        measured = _forward_flops(adapted, 3, train) - _forward_flops(base, 3, train)
        assert measured == 3 * expected + spec.batch_flops(arch), train
    recompute = spec.train_flops(arch, 12) - per_example
    assert recompute == (4 * 12 * 2 * 32 * 32 if dropout else 0)


def test_dora_step_flops_are_affine_in_the_batch_with_the_batch_part_as_intercept() -> None:
    arch = model_architecture(_bert())
    dora = parse_spec("dora", {"r": 4})
    steps = [step_flops(arch, dora, b, 12) for b in (1, 2, 3)]
    assert steps[2] - steps[1] == pytest.approx(steps[1] - steps[0])
    assert 2 * steps[0] - steps[1] == pytest.approx(dora.batch_flops(arch))


@pytest.mark.parametrize("method", ["dora", "vera"])
def test_added_params_are_what_the_model_gains(method: str) -> None:
    """Unique parameters and buffers after minus before; PEFT keeps the original head next
    to its trained copy, so the head counts once more than ``added_params``."""
    spec = parse_spec(method, {"r": 4})
    base = _bert()
    arch = model_architecture(base)
    adapted = spec.apply(_bert(), arch)

    def size(model: torch.nn.Module) -> int:
        tensors = {t.data_ptr(): t.numel() for t in (*model.parameters(), *model.buffers())}
        return sum(tensors.values())

    assert size(adapted) - size(base) == spec.added_params(arch) + arch.head_params


def test_vera_sends_only_its_scalings_and_shares_projections_by_seed() -> None:
    spec = parse_spec("vera", {"r": 4})
    arch = model_architecture(_bert())
    one, two = spec.apply(_bert(), arch), spec.apply(_bert(1), arch)
    state = get_adapter_state(one)
    assert all("vera_lambda" in k or "classifier" in k for k in state)
    assert sum(t.numel() for t in state.values()) == spec.trainable_params(arch)
    a1, a2 = (m.base_model.vera_A["default"] for m in (one, two))
    assert torch.equal(a1, a2)  # another base, the same seed: the same projection
    other = parse_spec("vera", {"r": 4, "projection_seed": 1}).apply(_bert(), arch)
    assert not torch.equal(a1, other.base_model.vera_A["default"])


def test_allocation_prices_the_new_methods_without_an_edit() -> None:
    path = get_model_spec("minilm-l6").local_path()
    assert path is not None
    minilm = architecture(AutoConfig.from_pretrained(str(path)), 2)
    catalogue = build_catalogue(minilm, CatalogueConfig(others=["vera", "dora"]))
    sent = {c.name: c.spec.update_bytes(minilm) for c in catalogue}
    full_depth = [v for c in catalogue if c.name.startswith("lora-") and "top" not in c.name
                  for v in [sent[c.name]]]  # fmt: skip
    assert full_depth and sent["vera"] < min(full_depth)  # scalings vs factors, all layers
    assert sent["vera"] == 4 * (12 * (256 + 384) + minilm.head_params)
    assert sent["dora"] == sent["lora-r8-all"] + 4 * 12 * 384  # + the magnitudes


def test_server_groups_follow_the_spec() -> None:
    lora = make_candidate("lora", {"r": 4}, "a")
    dora, vera = make_candidate("dora", {"r": 4}, "b"), make_candidate("vera", {}, "c")
    assert group_of(lora) == "lora" and lora.spec.envelope_alpha() == 16.0
    assert (group_of(dora), dora.spec.envelope_alpha()) == ("b", None)  # a group of its own
    assert (group_of(vera), vera.spec.envelope_alpha()) == ("c", None)
