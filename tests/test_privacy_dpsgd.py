"""Sample-level DP-SGD through opacus on tiny-bert: per-example clipping of the PEFT
parameters only (checked against per-example gradients computed one by one), the noise
scale, Poisson batches, ε reported, hooks removed from the shared model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fedpeft.client.train import ClientData, train
from fedpeft.errors import FedpeftError
from fedpeft.privacy import Accountant
from fedpeft.privacy.dpsgd import DpSgd, PrivateTraining, sample_rate, steps_per_epoch
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import Task, build_task
from tests.conftest import tiny_config


def _task(tmp_path: Path, method: str = "lora") -> Task:
    task = build_task(tiny_config(tmp_path, f"peft.method={method!r}"))
    for m in task.model.modules():  # deterministic forward: batched and one-by-one agree
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return task


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return _task(tmp_path_factory.mktemp("dpsgd"))


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _hooked(model: nn.Module) -> bool:
    return hasattr(model, "autograd_grad_sample_hooks") or any(
        hasattr(p, "grad_sample") for p in model.parameters()
    )


def test_per_example_clipping_of_peft_parameters_matches_a_one_by_one_reference(task) -> None:
    """σ = 0, SGD with lr 1: Δθ = −(Σ_i g_i·min(1, C/‖g_i‖) / B + μ(θ − θ⁰))."""
    model, params = task.model, _trainable(task.model)
    start = [p.detach().clone() for p in params]
    anchor = [p + 0.1 for p in start]  # θ − θ⁰ = −0.1: the proximal gradient is −0.1 μ
    idx, clip, mu, batch = task.data.partitions[0][:6], 0.05, 0.5, 8
    reference = [torch.zeros_like(p) for p in params]
    model.train()
    for i in idx:  # per-example gradients one at a time, clipped by their joint norm
        out = model(**task.data.train.collate(np.asarray([i])).model_inputs())
        grads = torch.autograd.grad(out.loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        for r, g in zip(reference, grads, strict=True):
            r += g * min(1.0, clip / float(norm))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    private = PrivateTraining(
        model, torch.optim.SGD(params, lr=1.0), DpSgd(0.0, clip), 40, batch, 0, (anchor, mu)
    )
    out = model(**task.data.train.collate(idx).model_inputs())
    out.loss.backward()
    assert all(p.grad_sample is not None for p in params)  # type: ignore[attr-defined]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters() if not p.requires_grad)
    private.optimizer.step()
    metrics = private.close()
    for p, s, r in zip(params, start, reference, strict=True):
        expected = s - (r / batch + mu * (s - (s + 0.1)))
        torch.testing.assert_close(p.detach(), expected, atol=2e-6, rtol=1e-4)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert metrics["dp_steps"] == 1.0 and not _hooked(model)
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)


def test_noise_only_step_has_scale_sigma_c_over_b(task) -> None:
    params = _trainable(task.model)
    start = [p.detach().clone() for p in params]
    sigma, clip, batch = 2.0, 0.3, 16
    private = PrivateTraining(
        task.model, torch.optim.SGD(params, lr=1.0), DpSgd(sigma, clip), 64, batch, 5
    )
    private._noise_only_step()  # what an empty Poisson draw does
    private.close()
    moved = torch.cat([(s - p.detach()).reshape(-1) for p, s in zip(params, start, strict=True)])
    x = moved.double().numpy() * batch  # = N(0, σ²C²) per coordinate
    chi2 = float((x**2).sum()) / (sigma * clip) ** 2
    cdf = stats.chi2.cdf(chi2, df=x.size)
    assert 2 * min(cdf, 1 - cdf) > 1e-4 and x.size > 1000
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)


def test_poisson_batches_have_rate_q_and_one_pass_has_ceil_n_over_b_draws(task) -> None:
    params = _trainable(task.model)
    private = PrivateTraining(
        task.model, torch.optim.SGD(params, lr=0.0), DpSgd(1.0, 1.0), 32, 8, 0
    )
    indices = task.data.partitions[0]
    rng = np.random.default_rng(0)
    sizes = [len(b) for _ in range(200) for b in private.batches(task.data.train, indices, rng)]
    private.close()
    q = sample_rate(len(indices), 8)
    assert steps_per_epoch(len(indices), 8) == 4 and q == 0.25
    assert len(sizes) + private.steps == 800  # every draw: a batch, or a noise-only step
    mean, sd = np.mean(sizes), np.sqrt(len(indices) * q * (1 - q) / len(sizes))
    assert abs(mean - q * len(indices)) < 5 * sd


def test_train_hook_reports_epsilon_and_leaves_no_hooks(task, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    data = ClientData(task.data.train, task.data.partitions[0])
    ins = instruction_for(cfg, 1, 0)
    dp = DpSgd(1.1, 1.0, delta=1e-5)
    update = train(task.model, ins, data, task.device, dp)
    m = update.metrics
    q = sample_rate(len(data.indices), ins.batch_size)
    assert m["dp_sample_rate"] == q and m["dp_steps"] == steps_per_epoch(32, 16) == 2
    acc = Accountant("rdp")
    acc.step(1.1, q, 2)
    assert m["dp_epsilon"] == pytest.approx(acc.epsilon(1e-5), rel=1e-12)
    assert not _hooked(task.model)
    again = train(task.model, ins, data, task.device, dp)  # the shared model trains again
    assert again.metrics["dp_steps"] == 2.0 and not _hooked(task.model)
    plain = train(task.model, ins, data, task.device)
    assert "dp_epsilon" not in plain.metrics


def test_dp_training_prints_no_torch_hook_warnings(task, tmp_path: Path) -> None:
    """torch's "Full backward hook is firing…" (a frozen base's adapted layer has inputs that
    need no gradient, which opacus does not need) is not shown to the user."""
    import warnings

    data = ClientData(task.data.train, task.data.partitions[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(
            task.model,
            instruction_for(tiny_config(tmp_path), 1, 0),
            data,
            task.device,
            DpSgd(1.1, 1.0, delta=1e-5),
        )
    assert [str(w.message)[:40] for w in caught if "hook" in str(w.message)] == []


@pytest.mark.parametrize("method", ["ia3", "prompt"])
def test_methods_opacus_cannot_sample_are_refused_and_leave_no_hooks(tmp_path, method) -> None:
    task = _task(tmp_path, method)
    cfg = tiny_config(tmp_path, f"peft.method={method!r}")
    data = ClientData(task.data.train, task.data.partitions[0])
    with pytest.raises(FedpeftError, match="per-example gradients"):
        train(task.model, instruction_for(cfg, 1, 0), data, task.device, DpSgd(1.0, 1.0))
    assert not _hooked(task.model)
    train(task.model, instruction_for(cfg, 1, 0), data, task.device)  # still usable


def test_bad_settings_are_refused() -> None:
    with pytest.raises(FedpeftError, match="clip norm"):
        DpSgd(1.0, 0.0)
    with pytest.raises(FedpeftError, match="noise multiplier"):
        DpSgd(float("nan"), 1.0)
