"""Frozen linear layers stored in bf16 under bf16 autocast (``run.frozen_bf16``,
``fedpeft.models.precision``): the same trained adapters and logits, bit for bit, as
float32 storage; float32 wherever something trains; left alone where a method reads the
weights or autocast is off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedpeft.client import ClientData, train
from fedpeft.errors import FedpeftError
from fedpeft.models.precision import StoredLowLinear, store_low
from fedpeft.peft import get_adapter_state
from fedpeft.privacy.dpsgd import DpSgd
from fedpeft.server.configure import instruction_for
from fedpeft.server.evaluate import eval_order, predict_batches
from fedpeft.server.task import Task, build_task
from fedpeft.types import TrainInstruction


def _task(tiny, *extra: str) -> Task:  # type: ignore[no-untyped-def]
    return build_task(tiny("run.autocast='bf16'", *extra))


def _stored(model: nn.Module) -> int:
    return sum(isinstance(m, StoredLowLinear) for m in model.modules())


def _trained(task: Task, method: str = "", options: str = "{}") -> dict[str, torch.Tensor]:
    model = task.model_for(method, options)
    ins = TrainInstruction(1, 0, 1, 3, 8, 3e-3, 0.0, 0.0, 7, method=method, options=options)
    train(model, ins, ClientData(task.data.train, task.data.partitions[0]), task.device)
    return get_adapter_state(model)


def _logits(task: Task) -> torch.Tensor:
    batches = eval_order(task.data.eval, 16)
    return predict_batches(task.model, task.data.eval, batches, task.device)


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("tiny-bert", "lora"),
        ("tiny-bert", "vera"),
        ("tiny-bert", "houlsby"),
        ("tiny-bert", "pfeiffer"),
        ("tiny-bert", "ia3"),
        ("tiny-bert", "prompt"),
        ("tiny-bert", "prefix"),
        ("tiny-llama", "lora"),  # a decoder with a classification head
    ],
)
def test_training_and_logits_are_bit_equal(tiny, model: str, method: str) -> None:  # type: ignore[no-untyped-def]
    sets = [f"model.name='{model}'", f"peft.method='{method}'", "model.task='classify'"]
    low, full = _task(tiny, *sets), _task(tiny, *sets, "run.frozen_bf16=false")
    assert _stored(low.model) > 0 and _stored(full.model) == 0
    assert all(p.dtype == torch.float32 for p in low.model.parameters() if p.requires_grad), (
        "trained parameters stay float32"
    )
    a, b = _trained(low), _trained(full)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(_logits(low), _logits(full))


def test_frozen_weights_take_half_the_memory(tiny) -> None:  # type: ignore[no-untyped-def]
    low, full = _task(tiny), _task(tiny, "run.frozen_bf16=false")

    def frozen_bytes(task: Task) -> int:
        return sum(p.numel() * p.element_size() for p in task.base.parameters() if p.dim() == 2)

    assert frozen_bytes(low) < frozen_bytes(full)
    stored = [m.weight for m in low.base.modules() if isinstance(m, StoredLowLinear)]
    assert stored and all(w.dtype == torch.bfloat16 for w in stored)


@pytest.mark.parametrize("method", ["dora", "sparse", "full", "bitfit"])
def test_methods_that_read_or_train_the_weights_keep_float32(tiny, method: str) -> None:  # type: ignore[no-untyped-def]
    """BitFit trains every linear layer's bias: its layers stay plain ``nn.Linear``."""
    task = _task(tiny, f"peft.method='{method}'")
    assert _stored(task.model) == 0 and _stored(task.base) == 0


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_generation_runs_under_autocast_and_is_bit_equal(tiny, method: str) -> None:  # type: ignore[no-untyped-def]
    """A causal LM's ``generate`` calls the inner model's forward, outside the autocast
    around ``forward``: it is wrapped too, so stored weights give float32 storage's tokens
    and scores, bit for bit (and not float32's: it runs in bf16)."""
    sets = ["model.name='tiny-llama'", f"peft.method='{method}'"]
    low, full = _task(tiny, *sets), _task(tiny, *sets, "run.frozen_bf16=false")
    off = build_task(tiny(*sets))  # the fixture's float32
    assert low.kind == "instruct" and _stored(low.model) > 0 and _stored(full.model) == 0
    split = low.data.eval
    batch = split.collate_prompts(np.arange(min(4, len(split))))

    def scores(task: Task) -> torch.Tensor:
        _trained(task)
        task.model.eval()  # no dropout
        out = task.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=3,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=split.pad_id,
        )
        return torch.stack(out.scores).float()

    a, b, c = scores(low), scores(full), scores(off)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # bf16 arithmetic: generate ran under autocast


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_dp_sgd_trains_over_a_stored_base(tiny, method: str) -> None:  # type: ignore[no-untyped-def]
    """opacus samples per-example gradients by a layer's exact type: a layer that trains
    (BitFit's biases) must stay ``nn.Linear``."""
    cfg = tiny("run.autocast='bf16'", f"peft.method='{method}'")
    task = build_task(cfg)
    assert (_stored(task.model) > 0) == (method == "lora")
    data = ClientData(task.data.train, task.data.partitions[0])
    update = train(task.model, instruction_for(cfg, 1, 0), data, task.device, DpSgd(1.0, 1.0))
    assert update.metrics["dp_steps"] > 0


def test_nothing_is_stored_without_bf16_autocast(tiny) -> None:  # type: ignore[no-untyped-def]
    task = build_task(tiny())  # the fixture's float32
    assert _stored(task.model) == 0


def test_models_built_later_train_in_float32(tiny) -> None:  # type: ignore[no-untyped-def]
    """A model of another method built over the stored base (a worker's instruction): the
    stored layers come with it, every trained tensor is float32, its head starts from the
    base's float32 head; a method that reads the base's weights is refused."""
    task = _task(tiny)
    assert task.base.classifier.weight.dtype == torch.float32  # the head is not stored
    for method, options in (("lora", {"r": 2}), ("houlsby", {}), ("prompt", {})):
        model = task.model_for(method, json.dumps(options, sort_keys=True))
        assert _stored(model) > 0 or method == "prompt", method
        trained = [p for p in model.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 for p in trained), method
    for method in ("dora", "sparse", "full"):
        with pytest.raises(FedpeftError, match="run.frozen_bf16 = false"):
            task.model_for(method, "{}")


def test_stored_layer_outside_autocast_computes_in_the_inputs_dtype() -> None:
    layer = nn.Linear(8, 4).requires_grad_(False)
    reference = layer.weight.detach().to(torch.bfloat16).float()
    holder = nn.Sequential(layer)
    assert store_low(holder, torch.bfloat16) == 1 and isinstance(layer, StoredLowLinear)
    x = torch.randn(3, 8)
    out = layer(x)  # float32 input, no autocast: no dtype error, float32 arithmetic
    assert out.dtype == torch.float32
    assert torch.allclose(out, x @ reference.T + layer.bias, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_tied_and_trained_weights_are_left_alone() -> None:
    embed = nn.Embedding(10, 8)
    out = nn.Linear(8, 10, bias=False)
    out.weight = embed.weight  # a decoder's tied output layer
    trained = nn.Linear(8, 8)
    frozen = nn.Linear(8, 8)
    model = nn.ModuleList([embed, out, trained, frozen]).requires_grad_(False)
    trained.requires_grad_(True)
    assert store_low(model, torch.bfloat16) == 1
    assert frozen.weight.dtype == torch.bfloat16
    assert embed.weight.dtype == torch.float32 and trained.weight.dtype == torch.float32
    assert type(out) is nn.Linear and type(trained) is nn.Linear


@pytest.mark.parametrize(
    "extra",
    [
        ("allocation.enabled=true",),
        ("data.client_test_fraction=0.2", "personalization.mode='dual'"),
        ("data.client_test_fraction=0.2", "personalization.baselines=true"),
    ],
)
def test_runs_that_start_more_adapters_over_the_base_keep_float32(tiny, extra) -> None:  # type: ignore[no-untyped-def]
    """peft would create those adapters in the stored dtype (initial values rounded)."""
    assert _stored(_task(tiny, *extra).model) == 0


def test_generative_qa_on_a_decoder_is_bit_equal(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedpeft.server.evaluate import evaluate_model
    from tests.test_qa import _squad_json

    sets = [
        "data.dataset='squad'",
        f"data.train_file='{_squad_json(tmp_path / 'train.json', articles=4)}'",
        f"data.eval_file='{_squad_json(tmp_path / 'dev.json', articles=1)}'",
        "model.name='tiny-llama'",
        "model.max_length=32",
        "data.partition='iid'",
    ]
    low, full = _task(tiny, *sets), _task(tiny, *sets, "run.frozen_bf16=false")
    assert low.kind == "qa" and _stored(low.model) > 0
    results = []
    for task in (low, full):
        _trained(task)
        results.append(evaluate_model(task.model, task.data.eval, 8, task.device))
    assert results[0] == results[1]
