"""FedNova's normalised averaging (``aggregation.fednova``), against its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.aggregation.fedavg import fedavg
from fedpeft.aggregation.fednova import normalise_work


def test_fedavg_of_the_rewritten_states_is_fednovas_step() -> None:
    """``θ⁺ = θ⁰ + τ_eff Σ p_i Δ_i/τ_i`` (Wang et al., 2020, eq. 6 with ‖a_i‖₁ = τ_i)."""
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 4, generator=gen)}
    taus, ns = [2.0, 8.0, 5.0], [10.0, 30.0, 60.0]
    states = [{"w": start["w"] + torch.randn(3, 4, generator=gen)} for _ in taus]
    out = fedavg(
        normalise_work([(s, start, t, n) for s, t, n in zip(states, taus, ns, strict=True)])
    )
    p = np.array(ns) / sum(ns)
    tau_eff = float(np.dot(p, taus))
    deltas = [(s["w"] - start["w"]).double().numpy() / t for s, t in zip(states, taus, strict=True)]
    expected = start["w"].double().numpy() + tau_eff * np.tensordot(p, np.stack(deltas), 1)
    np.testing.assert_allclose(out["w"].double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_equal_work_changes_nothing_and_inputs_are_untouched() -> None:
    start = {"w": torch.zeros(2)}
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, -1.0])}
    out = normalise_work([(a, start, 4.0, 1.0), (b, start, 4.0, 3.0)])
    assert torch.equal(out[0][0]["w"], a["w"]) and torch.equal(out[1][0]["w"], b["w"])
    assert [w for _, w in out] == [1.0, 3.0]
    assert torch.equal(a["w"], torch.tensor([1.0, 2.0]))


def test_tau_eff_is_per_key_over_its_holders() -> None:
    """A key only some clients hold is averaged over them, so τ_eff is theirs too."""
    start = {"top": torch.zeros(1), "low": torch.zeros(1)}
    everything = {"top": torch.ones(1), "low": torch.ones(1)}
    top_only = {"top": torch.ones(1)}
    out = normalise_work(
        [(everything, start, 2.0, 1.0), (top_only, {"top": start["top"]}, 6.0, 1.0)]
    )
    assert out[0][0]["low"].item() == pytest.approx(1.0)  # only holder: τ_eff = its τ
    assert out[0][0]["top"].item() == pytest.approx(4.0 / 2.0)  # τ_eff = (2 + 6)/2 = 4
    assert out[1][0]["top"].item() == pytest.approx(4.0 / 6.0)


def test_bad_inputs_are_refused() -> None:
    s = {"w": torch.ones(1)}
    with pytest.raises(ValueError, match="local steps and weight must be positive"):
        normalise_work([(s, s, 0.0, 1.0)])
    with pytest.raises(ValueError, match="no start value for 'w'"):
        normalise_work([(s, {}, 1.0, 1.0)])


def test_the_round_normalises_each_group_by_the_steps_its_clients_report() -> None:
    """The loop's wiring: each accepted reply's ``steps`` metric is τ_i, its served start is
    θ⁰_i, its example count n_i, and τ_eff is computed within its group only."""
    from fedpeft.server.loop import _normalised
    from fedpeft.server.receive import Received, Sent
    from fedpeft.types import ClientRecord, ClientStatus, ClientUpdate, TrainInstruction

    def reply(cid: int, group: str, start: float, end: float, steps: float, n: int):  # type: ignore[no-untyped-def]
        ins = TrainInstruction(1, cid, 1, None, 8, 0.1, 0.0, 0.0, 0, group=group)
        sent = Sent(ins, b"", {"w": torch.tensor([start])})
        rec = ClientRecord(1, cid, ClientStatus.OK, "", n, 0, 0, {}, group)
        update = ClientUpdate(cid, {"w": torch.tensor([end])}, n, {"steps": steps})
        return Received(sent, rec, update)

    got = {
        0: reply(0, "lora", 0.0, 2.0, 2.0, 10),
        1: reply(1, "lora", 0.0, 3.0, 6.0, 30),
        2: reply(2, "head", 1.0, 2.0, 5.0, 7),  # alone in its group: unchanged
    }
    out = _normalised({c: r.update for c, r in got.items() if r.update}, got)
    tau_eff = (10 * 2.0 + 30 * 6.0) / 40  # 5.0
    assert out[0][0]["w"].item() == pytest.approx(tau_eff * 2.0 / 2.0)
    assert out[1][0]["w"].item() == pytest.approx(tau_eff * 3.0 / 6.0)
    assert out[2][0]["w"].item() == pytest.approx(2.0) and out[2][1] == 7.0
