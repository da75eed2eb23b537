"""Knowledge-distillation fusion of different PEFT methods on the tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.models import get_model_spec, load_classifier
from fedpeft.peft import get_adapter_state, model_architecture, parse_spec, set_adapter_state
from fedpeft.server.fusion import distill, ensemble_probs, kd_loss, teacher_kl


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


Z_S = np.array([[1.0, -0.5, 0.2], [0.0, 2.0, -1.0]])
Z_A = np.array([[0.3, 0.1, -0.2], [1.5, 0.5, 0.0]])
Z_B = np.array([[-1.0, 0.4, 0.9], [0.2, -0.3, 1.1]])


def test_ensemble_is_the_mean_of_softmaxes() -> None:
    got = ensemble_probs([torch.tensor(Z_A), torch.tensor(Z_B)], temperature=2.0)
    np.testing.assert_allclose(got.numpy(), (_softmax(Z_A / 2) + _softmax(Z_B / 2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize("labelled", [False, True])
def test_kd_loss_matches_a_hand_computation(direction: str, labelled: bool) -> None:
    t, alpha = 2.0, 0.3
    teacher = (_softmax(Z_A / t) + _softmax(Z_B / t)) / 2
    p_s = _softmax(Z_S / t)
    if direction == "student_teacher":
        kl = (p_s * (np.log(p_s) - np.log(teacher))).sum(-1).mean()
    else:
        kl = (teacher * (np.log(teacher) - np.log(p_s))).sum(-1).mean()
    expected = (1 - alpha) * t**2 * kl
    labels = np.array([0, 2])
    if labelled:
        expected += alpha * -np.log(_softmax(Z_S)[[0, 1], labels]).mean()
    got = kd_loss(
        torch.tensor(Z_S),
        torch.tensor(teacher),
        torch.tensor(labels) if labelled else None,
        alpha,
        t,
        direction,  # type: ignore[arg-type]
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_when_the_student_is_the_teacher() -> None:
    z = torch.tensor(Z_S)
    assert float(kd_loss(z, ensemble_probs([z], 1.5), None, 0.5, 1.5)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(z, ensemble_probs([z]), alpha=1.5)
    with pytest.raises(ValueError, match="direction"):
        kd_loss(z, ensemble_probs([z]), direction="both")  # type: ignore[arg-type]


def _peft_model(method: str, options: dict, seed: int) -> torch.nn.Module:
    """The same tiny BERT (seed 0) with ``method`` applied and its adapter set to noise."""
    base = load_classifier(get_model_spec("tiny-bert"), 2, 0)
    model = parse_spec(method, options).apply(base, model_architecture(base))
    g = torch.Generator().manual_seed(seed)
    state = get_adapter_state(model)
    set_adapter_state(
        model, {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    )
    return model


def _batches(labelled: bool) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(3):
        batch = {
            "input_ids": torch.randint(1000, 3000, (8, 12), generator=g),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
        }
        if labelled:
            batch["labels"] = torch.randint(0, 2, (8,), generator=g)
        out.append(batch)
    return out


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _objective(model, batches, teachers) -> float:
    """The mean distillation objective (α = 0.5, T = 2) of ``model`` against fixed teachers."""
    model.eval()
    with torch.inference_mode():
        return float(
            np.mean(
                [
                    float(kd_loss(model(**_inputs(b)).logits, t, b.get("labels"), 0.5, 2.0))
                    for b, t in zip(batches, teachers, strict=True)
                ]
            )
        )


@pytest.mark.parametrize("labelled", [False, True])
def test_distill_moves_each_method_towards_the_ensemble_and_only_its_adapter(labelled) -> None:
    models = {"lora": _peft_model("lora", {"r": 2}, 1), "ia3": _peft_model("ia3", {}, 2)}
    batches = _batches(labelled)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    kl_before = {n: teacher_kl(m, models, batches) for n, m in models.items()}
    assert min(kl_before.values()) > 1e-4  # the methods disagree to begin with
    with torch.inference_mode():
        teachers = [
            ensemble_probs([m.eval()(**_inputs(b)).logits for m in models.values()], 2.0)
            for b in batches
        ]
    objective = {n: _objective(m, batches, teachers) for n, m in models.items()}
    fused = distill(models, batches, steps=15, lr=1e-2, alpha=0.5, temperature=2.0)
    for name, model in models.items():  # the caller's models are as they were
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key]), key
    for name, model in models.items():
        assert set(fused[name]) == set(get_adapter_state(model))
        set_adapter_state(model, fused[name])
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[name][k])}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert changed and changed <= trainable, changed - trainable
        after = _objective(model, batches, teachers)
        # without labels the objective is (1 − α)·T²·KL to the teacher: the KL at least halves
        assert after < (objective[name] if labelled else 0.5 * objective[name]), (name, after)


def test_distill_rejects_bad_settings() -> None:
    model = _peft_model("lora", {"r": 2}, 1)
    with pytest.raises(ValueError, match="positive"):
        distill({"lora": model}, _batches(False), steps=0)
    with pytest.raises(ValueError, match="at least one"):
        distill({"lora": model}, [])
