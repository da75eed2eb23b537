"""SCAFFOLD and FedNova: numpy references, invariants, drift on a quadratic, and the client
half in a real client's training."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.aggregation import fedavg
from fedpeft.aggregation.drift import fednova, option_ii_control, server_control, zeros_like_state
from fedpeft.client import ClientData, train
from fedpeft.client.scaffold import control_delta, corrected_gradient, train_scaffold
from fedpeft.peft import get_adapter_state, set_adapter_state
from fedpeft.server.configure import instruction_for
from fedpeft.server.task import build_task
from tests.conftest import tiny_config


def _states(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)} for _ in range(k)
    ]


def test_fednova_matches_numpy_and_is_fedavg_for_equal_steps() -> None:
    x = _states(1, 9)[0]
    ys = _states(3)
    n, a = [10.0, 30.0, 60.0], [2.0, 5.0, 11.0]
    got = fednova(x, list(zip(ys, n, a, strict=True)))
    p = np.asarray(n) / sum(n)
    tau = float(p @ np.asarray(a))
    for key in x:
        d = sum(p[i] * (ys[i][key].numpy() - x[key].numpy()) / a[i] for i in range(3))
        assert np.allclose(got[key].numpy(), x[key].numpy() + tau * d, atol=1e-6)
    same = fednova(x, [(y, w, 7.0) for y, w in zip(ys, n, strict=True)])
    avg = fedavg(list(zip(ys, n, strict=True)))
    assert all(torch.allclose(same[k], avg[k], atol=1e-6) for k in x)
    perm = fednova(x, [(ys[i], n[i], a[i]) for i in (2, 0, 1)])
    assert all(torch.allclose(perm[k], got[k], atol=1e-6) for k in x)
    with pytest.raises(ValueError):
        fednova(x, [(ys[0], 1.0, 0.0)])


def test_scaffold_server_and_option_ii_controls_match_numpy() -> None:
    c, *deltas = _states(4, 1)
    got = server_control(c, deltas, num_clients=10)
    for k in c:
        want = c[k].numpy() + sum(d[k].numpy() for d in deltas) / 10
        assert np.allclose(got[k].numpy(), want, atol=1e-6)
    ci, c, x, y = _states(4, 2)
    new = option_ii_control(ci, c, x, y, steps=5, lr=0.1)
    for k in c:
        want = ci[k].numpy() - c[k].numpy() + (x[k].numpy() - y[k].numpy()) / 0.5
        assert np.allclose(new[k].numpy(), want, atol=1e-5)
    delta = control_delta(new, ci)
    assert all(torch.allclose(delta[k], new[k] - ci[k]) for k in c)
    with pytest.raises(ValueError):
        server_control(c, deltas, num_clients=2)


def _local_sgd(x, a, b, steps, lr, c=None, ci=None):  # type: ignore[no-untyped-def]
    """K SGD steps on f(x) = ½‖A x − b‖², corrected with (c, c_i) when given."""
    y = x.clone()
    for _ in range(steps):
        g = a.T @ (a @ y - b)
        if c is not None:
            g = corrected_gradient(g, c, ci)
        y = y - lr * g
    return y


def test_scaffold_removes_client_drift_on_a_quadratic() -> None:
    """Two clients with different quadratics, 10 local SGD steps a round: FedAvg settles
    away from the global optimum (client drift), SCAFFOLD converges to it."""
    gen = torch.Generator().manual_seed(0)
    problems = [
        (
            torch.randn(6, 3, generator=gen, dtype=torch.float64) * s,
            torch.randn(6, generator=gen, dtype=torch.float64),
        )
        for s in (0.4, 1.3)
    ]
    h = sum(a.T @ a for a, _ in problems)
    optimum = torch.linalg.solve(h, sum(a.T @ b for a, b in problems))
    steps, lr = 10, 0.05
    x_avg = torch.zeros(3, dtype=torch.float64)
    x_sc = torch.zeros(3, dtype=torch.float64)
    c = zeros_like_state({"x": x_sc})
    cis = [zeros_like_state({"x": x_sc}) for _ in problems]
    for _ in range(300):
        x_avg = sum(_local_sgd(x_avg, a, b, steps, lr) for a, b in problems) / 2
        ys, deltas = [], []
        for i, (a, b) in enumerate(problems):
            y = _local_sgd(x_sc, a, b, steps, lr, c["x"].double(), cis[i]["x"].double())
            new = option_ii_control(cis[i], c, {"x": x_sc}, {"x": y}, steps, lr)
            deltas.append(control_delta(new, cis[i]))
            cis[i] = new
            ys.append(y)
        x_sc = sum(ys) / 2
        c = server_control(c, deltas, num_clients=2)
    drift_avg = float((x_avg - optimum).norm())
    drift_sc = float((x_sc - optimum).norm())
    assert drift_avg > 1e-2  # FedAvg's fixed point is not the optimum
    assert drift_sc < 1e-4 < drift_avg / 100


def test_scaffold_client_half_in_training(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "peft.method='head'")
    task = build_task(cfg)
    start = get_adapter_state(task.model)
    data = ClientData(task.data.train, np.arange(32))
    ins = instruction_for(cfg, 1, 0)
    plain = train(task.model, ins, data, task.device)
    zero = zeros_like_state(start)
    set_adapter_state(task.model, start)
    reply = train_scaffold(task.model, ins, data, task.device, zero, zero)
    # zero controls: the same training as plain, and c_i⁺ the mean raw gradient
    assert all(torch.equal(reply.update.state[k], plain.state[k]) for k in start)
    assert reply.local_control.keys() == start.keys()
    assert all(torch.equal(reply.control_delta[k], reply.local_control[k]) for k in start)
    assert any(float(v.abs().sum()) > 0 for v in reply.local_control.values())
    # a large server control on the bias drives it down, a large local control up
    bias = next(k for k in start if k.endswith("classifier.bias"))
    for sign in (1.0, -1.0):
        set_adapter_state(task.model, start)
        c = {k: v.clone() for k, v in zero.items()}
        c[bias] = torch.full_like(c[bias], 10.0 * sign)
        moved = train_scaffold(task.model, ins, data, task.device, c, zero).update.state[bias]
        assert torch.all(torch.sign(moved - start[bias]) == -sign)


def test_fedexp_step_size_by_formula_and_limits() -> None:
    from fedpeft.aggregation.drift import FEDEXP_EPS, fedexp, fedexp_lr

    x = {"w": torch.zeros(4, dtype=torch.float64)}
    same = [({"w": torch.ones(4, dtype=torch.float64)}, 1.0)] * 3
    assert fedexp_lr(x, same) == 1.0  # agreeing clients: FedAvg
    eye = torch.eye(4, dtype=torch.float64)
    orth = [({"w": eye[i]}, 1.0) for i in range(4)]  # M = 4 orthogonal unit updates
    # Σ p‖Δ_i‖² = 1, ‖Δ̄‖² = 4·(1/4)² = 1/4 → η = 1 / (2·(1/4 + ε))
    assert fedexp_lr(x, orth) == pytest.approx(1 / (2 * (0.25 + FEDEXP_EPS)))
    out = fedexp(x, orth)
    assert torch.allclose(
        out["w"], fedexp_lr(x, orth) * torch.full((4,), 0.25, dtype=torch.float64)
    )
    ys = _states(3, 5)
    x2 = _states(1, 6)[0]
    n = [1.0, 2.0, 5.0]
    p = np.asarray(n) / 8
    d = [{k: ys[i][k].numpy() - x2[k].numpy() for k in x2} for i in range(3)]
    spread = sum(p[i] * sum(float((d[i][k] ** 2).sum()) for k in x2) for i in range(3))
    mean = {k: sum(p[i] * d[i][k] for i in range(3)) for k in x2}
    mean_sq = sum(float((m**2).sum()) for m in mean.values())
    eta = max(1.0, spread / (2 * (mean_sq + FEDEXP_EPS)))
    assert fedexp_lr(x2, list(zip(ys, n, strict=True))) == pytest.approx(eta, rel=1e-6)
    got = fedexp(x2, list(zip(ys, n, strict=True)))
    for k in x2:
        assert np.allclose(got[k].numpy(), x2[k].numpy() + eta * mean[k], atol=1e-5)
