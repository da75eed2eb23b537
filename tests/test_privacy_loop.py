"""Differential privacy in the real round loop: tiny-bert runs in each mode, ε after every
round against opacus's accountant called directly, the noise's scale on the wire and in the
global, exact resume, the budget's refusal and the config-time refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedpeft.client import META_METRICS
from fedpeft.compression import decode, encode
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state
from fedpeft.privacy import dpsgd_release
from fedpeft.report import write_report
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.server.task import build_task
from fedpeft.types import TrainInstruction
from tests.test_checkpoint import _same, _stopped

SIGMA, CLIP = 1.5, 0.05
CENTRAL = (
    "privacy.mode='central'",
    f"privacy.noise_multiplier={SIGMA}",
    f"privacy.clip_norm={CLIP}",
)
LOCAL = ("privacy.mode='local'", f"privacy.noise_multiplier={SIGMA}", f"privacy.clip_norm={CLIP}")


def _opacus_epsilon(releases: list[tuple[float, float, int]], delta: float = 1e-5) -> float:
    """ε of ``releases`` (σ, q, steps) from opacus's RDP accountant, one step at a time."""
    acc = RDPAccountant()
    for sigma, q, steps in releases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


def _eps(result) -> list[float]:  # type: ignore[no-untyped-def]
    return [r["privacy"]["epsilon"] for r in result.rounds]


def _clients(run_dir: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]


def _noise_norm_band(d: int, std: float, signal: float) -> tuple[float, float]:
    """‖x + N(0, std² I_d)‖ with ‖x‖ ≤ signal: within std·√d ± (signal + 5 std), as the χ_d
    norm's spread is std/√2."""
    centre = std * math.sqrt(d)
    return centre - signal - 5 * std, centre + signal + 5 * std


def test_central_dp_reports_the_epsilon_opacus_computes_after_every_round(tiny) -> None:
    cfg = tiny(*CENTRAL, "data.num_clients=4", "server.fraction=0.5", "run.rounds=3")
    result = run_local(cfg)
    expected = [_opacus_epsilon([(SIGMA, 0.5, r)]) for r in (1, 2, 3)]
    assert _eps(result) == pytest.approx(expected, rel=1e-9)
    assert expected[0] < expected[1] < expected[2]
    summary = result.summary["privacy"]
    assert summary["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    assert summary["mode"] == "central" and summary["stopped"] is None
    assert all(r["privacy"]["clip_norm"] == CLIP for r in result.rounds)


def test_central_dp_adds_sigma_s_noise_once_to_the_sum(tiny) -> None:
    cfg = tiny(*CENTRAL, "run.rounds=1")  # 2 clients, both sampled: m = 2
    start = {k: v.clone() for k, v in get_adapter_state(build_task(cfg).model).items()}
    result = run_local(cfg)
    d = sum(v.numel() for v in start.values())
    moved = math.sqrt(
        sum(float((result.state[k].double() - start[k].double()).pow(2).sum()) for k in start)
    )
    # (Σ clip(Δ_c) + N(0, σ²S²I)) / m: noise σS/m per coordinate, signal ≤ S
    low, high = _noise_norm_band(d, SIGMA * CLIP / 2, CLIP)
    assert low <= moved <= high
    plain = run_local(tiny("run.rounds=1"))
    moved_plain = math.sqrt(
        sum(float((plain.state[k].double() - start[k].double()).pow(2).sum()) for k in start)
    )
    assert not low <= moved_plain <= high  # the control: without DP the change is not noise


def test_local_dp_clients_send_noisy_updates_and_epsilon_follows_each_client(tiny) -> None:
    result = run_local(tiny(*LOCAL))  # 2 clients, 2 rounds, each in both rounds: q = 1
    assert _eps(result) == pytest.approx([_opacus_epsilon([(SIGMA, 1.0, r)]) for r in (1, 2)])
    d = sum(v.numel() for v in result.state.values())
    low, high = _noise_norm_band(d, SIGMA * CLIP, CLIP)
    norms = [c["update_norm"] for c in _clients(result.run_dir)]
    assert len(norms) == 4 and all(low <= n <= high for n in norms)  # what the server sees
    assert all(c["metrics"]["dp_local_clipped"] in (0.0, 1.0) for c in _clients(result.run_dir))


def test_dpsgd_accounts_each_clients_steps_as_opacus_does(tiny) -> None:
    cfg = tiny("privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0", "run.rounds=1")
    result = run_local(cfg)
    clients = _clients(result.run_dir)
    worst = 0.0
    for c in clients:
        steps, q = dpsgd_release(cfg, c["num_examples"])
        assert c["metrics"]["dp_steps"] == steps and c["metrics"]["dp_sample_rate"] == q
        worst = max(worst, _opacus_epsilon([(1.0, q, steps)]))
    assert _eps(result) == pytest.approx([worst], rel=1e-9)


class _ReportedDp:
    """The real pool, with each client's reported DP-SGD release altered by ``reported``."""

    def __init__(self, inner: LocalClientPool, reported: dict[str, float | None]) -> None:
        self.inner, self.reported = inner, reported

    def num_examples(self, client_id: int) -> int | None:
        return self.inner.num_examples(client_id)

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        reply = self.inner.fit(instruction, payload)
        if instruction.round == 0:
            return reply
        state, meta = decode(reply)
        metrics = dict(meta[META_METRICS])  # type: ignore[call-overload]
        for key, value in self.reported.items():
            metrics.pop(key) if value is None else metrics.update({key: value})
        return encode(state, meta | {META_METRICS: metrics})


@pytest.mark.parametrize(
    "reported",
    [{"dp_sample_rate": None}, {"dp_sample_rate": 5.0}, {"dp_steps": 0.0}],
    ids=["no_rate", "rate_5", "no_steps"],
)
def test_dpsgd_accounts_the_planned_release_for_a_bad_report(tiny, reported) -> None:
    # a client's metrics are untrusted: a release that cannot be accounted is not a crash
    # of the server, nor a free round; it is counted as planned, at the σ the client was told
    cfg = tiny("privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0", "run.rounds=1")
    result = run_local(cfg, pool=lambda task: _ReportedDp(LocalClientPool(task), reported))
    releases = [dpsgd_release(cfg, c["num_examples"]) for c in _clients(result.run_dir)]
    worst = max(_opacus_epsilon([(1.0, q, steps)]) for steps, q in releases)
    assert _eps(result) == pytest.approx([worst], rel=1e-9)


def test_dpsgd_accounts_a_client_at_the_sigma_it_was_told(tiny) -> None:
    cfg = tiny("privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0", "run.rounds=1")
    told = run_local(cfg)
    boasted = {"dp_noise_multiplier": 1e6}  # claims far more noise: a smaller ε
    result = run_local(cfg, pool=lambda task: _ReportedDp(LocalClientPool(task), boasted))
    assert _eps(result) == _eps(told)


@pytest.mark.parametrize("mode", ["central_adaptive", "local"])
def test_a_resumed_dp_run_ends_exactly_like_the_uninterrupted_one(tiny, mode: str) -> None:
    extra = (
        (
            *CENTRAL,
            "privacy.adaptive_clipping=true",
            "privacy.count_noise_multiplier=1.0",
            "data.num_clients=4",
            "server.fraction=0.5",
        )
        if mode == "central_adaptive"
        else LOCAL
    )
    cfg = tiny(*extra, "run.rounds=3")
    full = run_local(cfg)
    resumed = run_local(cfg, resume=_stopped(cfg, end=1))
    _same(resumed.state, full.state)
    assert [r["privacy"] for r in resumed.rounds] == [r["privacy"] for r in full.rounds]
    if mode == "central_adaptive":  # the clip norm moved, and resumed from where it was
        assert len({r["privacy"]["clip_norm"] for r in full.rounds}) == 3


def test_a_run_stops_before_the_round_that_would_exceed_its_budget(tiny) -> None:
    cfg = tiny("privacy.mode='central'", "privacy.target_epsilon=2.0", "run.rounds=1")
    first = run_local(cfg)  # σ chosen so that its one planned round spends ≤ 2
    assert 1.9 <= _eps(first)[0] <= 2.0
    more = cfg.model_copy(update={"run": cfg.run.model_copy(update={"rounds": 2})})
    resumed = run_local(more, resume=first.run_dir)
    assert [r["round"] for r in resumed.rounds] == [1]
    stopped = resumed.summary["privacy"]["stopped"]
    assert stopped.startswith("round 2 refused: the next round would spend ε = ")
    assert "`privacy.target_epsilon` 2" in stopped and stopped.count(". ") == 0
    _same(resumed.state, first.state)
    report = write_report(resumed.run_dir).read_text()
    assert f"ε = **{_eps(first)[0]:.3f}**" in report and "stopped early: round 2 refused" in report


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("privacy.secure_aggregation=true", "server.aggregator='krum'"), "learns only the sum"),
        ((*CENTRAL, "server.aggregator='coordinate_median'"), "DP-FedAvg"),
        ((*CENTRAL, "server.mode='async'"), "'async'"),
        (("privacy.mode='local'", "privacy.noise_multiplier=0"), "bounds no ε"),
    ],
)
def test_combinations_that_break_privacy_are_refused_before_anything_runs(
    tiny, extra: tuple[str, ...], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(FedpeftError, match=expected) as info:
        run_local(tiny("data.num_clients=3", *extra))
    assert str(info.value).endswith(".") and ". " not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_async_local_dp_accounts_every_landed_reply_and_resumes_exactly(tiny) -> None:
    cfg = tiny(
        *LOCAL,
        "data.num_clients=3",
        "server.mode='async'",
        "run.rounds=3",
        "server.buffer_size=2",
        "server.max_concurrency=2",
    )
    full = run_local(cfg)
    releases: dict[int, int] = {}
    for step, record in enumerate(full.rounds, start=1):
        for c in _clients(full.run_dir):
            if c["round"] == step and c["status"] in ("ok", "rejected"):
                releases[c["client_id"]] = releases.get(c["client_id"], 0) + 1
        worst = max(_opacus_epsilon([(SIGMA, 1.0, k)]) for k in releases.values())
        assert record["privacy"]["epsilon"] == pytest.approx(worst, rel=1e-9)
    resumed = run_local(cfg, resume=_stopped(cfg, end=1))
    _same(resumed.state, full.state)
    assert [r["privacy"] for r in resumed.rounds] == [r["privacy"] for r in full.rounds]
