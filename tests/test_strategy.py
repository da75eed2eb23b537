"""Strategies composed from parts, run end to end on the tiny model."""

from __future__ import annotations

import pytest
import torch

from fedpeft.aggregation import aggregator_names
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state
from fedpeft.runtime.local import run_local
from fedpeft.server import Observer
from fedpeft.server.store import RunStore
from fedpeft.server.strategy import strategy_from_config
from fedpeft.server.task import build_task
from fedpeft.types import RoundRecord


def test_ffa_lora_clients_keep_a_fixed_and_train_b(tiny) -> None:
    cfg = tiny("server.aggregator='ffa_lora'")
    initial = get_adapter_state(build_task(cfg).model)
    result = run_local(cfg)
    a_keys = [k for k in result.state if "lora_A" in k]
    b_keys = [k for k in result.state if "lora_B" in k]
    assert a_keys and b_keys
    assert all(torch.equal(result.state[k], initial[k]) for k in a_keys)
    assert all(not torch.equal(result.state[k], initial[k]) for k in b_keys)


def test_fedavgm_without_momentum_at_lr_1_is_fedavg(tiny) -> None:
    plain = run_local(tiny())
    avgm = run_local(tiny("server.optimizer='fedavgm'", "server.momentum=0.0"))
    for key, value in plain.state.items():
        torch.testing.assert_close(avgm.state[key], value, rtol=0, atol=1e-6)


class _StopAfter(Observer):
    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == 1:
            raise KeyboardInterrupt


def test_server_optimiser_state_survives_resume(tiny) -> None:
    cfg = tiny("run.rounds=3", "server.optimizer='fedadam'", "server.server_lr=0.01")
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter())
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    opt_state = RunStore(stopped).load_checkpoint().optimizer["global"]
    assert opt_state and all(k.startswith(("m/", "v/")) for k in opt_state)
    resumed = run_local(cfg, resume=stopped)
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in aggregator_names() if n not in ("fedavg", "ffa_lora")])
def test_every_registered_aggregator_runs_a_round(tiny, name: str) -> None:
    sets = ("run.rounds=1", "data.num_clients=4", "server.proxy_size=16")
    method = ("peft.method='flora'",) if name == "flora" else ()  # they go together
    cfg = tiny(f"server.aggregator={name!r}", *sets, *method)
    result = run_local(cfg)
    assert result.rounds[0]["accepted"] == 4
    assert all(torch.isfinite(v).all() for v in result.state.values())


def test_bad_server_optimiser_settings_are_user_errors(tiny) -> None:
    with pytest.raises(FedpeftError):
        tiny("server.optimizer='sgd'")
    with pytest.raises(FedpeftError, match="server.server_lr"):
        tiny("server.server_lr=inf")
    cfg = tiny("server.optimizer='fedyogi'", "server.tau=1e-3")
    assert strategy_from_config(cfg.server).server_optimizer is not None


class _Tampers:
    """Client 1's reply is rewritten by ``tamper(start, state) → state`` before it is sent."""

    def __init__(self, inner, tamper) -> None:
        self.inner, self.tamper = inner, tamper

    def num_examples(self, client_id):
        return self.inner.num_examples(client_id)

    def fit(self, instruction, payload):
        from fedpeft.compression import decode, encode

        state, meta = decode(self.inner.fit(instruction, payload))
        if instruction.client_id == 1:
            state = self.tamper(decode(payload)[0], state)
        return encode(state, meta)


def _changes_a(start, state):
    """Trains A although FFA-LoRA freezes it: the update must be rejected."""
    key = next(k for k in state if "lora_A" in k)
    return state | {key: state[key] + 0.01}


def _boosts(start, state):
    """Scales the update Δ by 1,000 (a model-replacement attacker)."""
    return {k: start[k] + 1000.0 * (v - start[k]) for k, v in state.items()}


def test_ffa_lora_rejects_a_client_that_changed_a(tiny, monkeypatch) -> None:
    import json

    import fedpeft.runtime.local.simulator as sim

    real = sim.LocalClientPool
    monkeypatch.setattr(
        sim, "client_pool", lambda task, **kw: _Tampers(real(task, **kw), _changes_a)
    )
    result = run_local(tiny("server.aggregator='ffa_lora'", "run.rounds=1"))
    lines = (result.run_dir / "clients.jsonl").read_text().splitlines()
    status = {c["client_id"]: (c["status"], c["reason"]) for c in map(json.loads, lines)}
    assert status[0][0] == "ok"
    assert status[1][0] == "rejected" and "frozen" in status[1][1]


def _move(result, initial) -> float:
    return sum(float((result.state[k] - initial[k]).double().pow(2).sum()) for k in initial) ** 0.5


@pytest.mark.parametrize("clip", [None, 0.05])
def test_norm_clipping_bounds_what_one_boosted_update_moves(tiny, monkeypatch, clip) -> None:
    import json

    import fedpeft.runtime.local.simulator as sim

    real = sim.LocalClientPool
    monkeypatch.setattr(sim, "client_pool", lambda task, **kw: _Tampers(real(task, **kw), _boosts))
    sets = ["run.rounds=1", *([f"server.clip_norm={clip}"] if clip else [])]
    cfg = tiny(*sets, "server.head_init='random'")  # the global moves in round 1 only
    initial = get_adapter_state(build_task(cfg).model)
    result = run_local(cfg)
    rows = [json.loads(x) for x in (result.run_dir / "clients.jsonl").read_text().splitlines()]
    norms = {r["client_id"]: r["update_norm"] for r in rows}
    assert norms[1] > 100 * norms[0]  # the boost is real and measured before clipping
    if clip is None:
        assert _move(result, initial) > norms[1] / 4  # FedAvg carries half of it (2 clients)
    else:
        assert _move(result, initial) <= clip * (1 + 1e-6)  # a mean of Δs each within M


def test_clip_update_scales_only_updates_over_the_norm() -> None:
    from fedpeft.server.validate import clip_update
    from fedpeft.types import ClientUpdate

    start = {"w": torch.zeros(3, 4)}
    big = ClientUpdate(0, {"w": torch.full((3, 4), 2.0)}, 10)  # ‖Δ‖ = 2·√12
    out, norm = clip_update(big, start, 1.0)
    assert norm == pytest.approx(2 * 12**0.5)
    assert float(out.state["w"].norm()) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(out.state["w"] / out.state["w"][0, 0], torch.ones(3, 4))
    small, _ = clip_update(big, start, 100.0)
    assert torch.equal(small.state["w"], big.state["w"]) and out.num_examples == 10


def _random_states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(8, generator=gen)} for _ in range(n)]


def test_aggregator_options_reach_the_part_that_takes_them(tiny) -> None:
    states = _random_states(6)
    starts = [{"w": torch.zeros(8)}] * 6
    for k in (2, 3):
        cfg = tiny("server.aggregator='clustered'", f"server.aggregator_options={{k={k}}}")
        partition = strategy_from_config(cfg.server, groups=True).partition
        assert partition is not None and len(set(partition(states, starts))) == k
    cut = tiny("server.aggregator='clustered'", "server.aggregator_options={threshold=2.0}")
    partition = strategy_from_config(cut.server, groups=True).partition
    assert partition is not None and set(partition(states, starts)) == {0}  # one cluster
    # layer-wise with a huge temperature weighs every client equally: FedAvg exactly
    flat = tiny("server.aggregator='layerwise'", "server.aggregator_options={temperature=1e9}")
    loss = lambda s: 1.0 + float(s["w"].abs().sum())  # noqa: E731
    rule = strategy_from_config(flat.server, evaluate_proxy=loss).aggregate
    updates = [(s, float(i + 1)) for i, s in enumerate(states)]
    from fedpeft.aggregation import fedavg

    torch.testing.assert_close(rule(updates)["w"], fedavg(updates)["w"])
    sharp = tiny("server.aggregator='layerwise'", "server.aggregator_options={temperature=1e-4}")
    rule = strategy_from_config(sharp.server, evaluate_proxy=loss).aggregate
    assert not torch.allclose(rule(updates)["w"], fedavg(updates)["w"])


@pytest.mark.parametrize(
    ("aggregator", "options", "message"),
    [
        ("clustered", "{clusters=3}", "options are: k, seed, threshold"),
        ("clustered", "{k='two'}", "should be of type int"),
        ("clustered", "{k=0}", "`k` should be positive"),
        ("trimmed_mean", "{trim_fraction=0.7}", "trim_fraction"),
        ("exact_lora_svd", "{rank=4}", "options are: none"),  # the loop owns the shapes
        ("fedavg", "{k=2}", "options are: none"),
    ],
)
def test_bad_aggregator_options_are_config_errors(tiny, aggregator, options, message) -> None:
    cfg = tiny(f"server.aggregator={aggregator!r}", f"server.aggregator_options={options}")
    with pytest.raises(FedpeftError, match=message):
        build_task(cfg)


@pytest.mark.parametrize("name", aggregator_names())
def test_every_aggregator_lists_its_options_for_an_unknown_one(tiny, name: str) -> None:
    cfg = tiny(f"server.aggregator={name!r}", "server.aggregator_options={zzz=1}")
    with pytest.raises(FedpeftError, match=f"not an option of aggregator '{name}'; its options"):
        strategy_from_config(cfg.server, evaluate_proxy=lambda _: 0.0, groups=True)


def test_count_options_are_not_refused_by_the_trial(tiny) -> None:
    cfg = tiny("server.aggregator='multi_krum'", "server.aggregator_options={m=8,num_byzantine=2}")
    rule = strategy_from_config(cfg.server).aggregate
    out = rule([(s, 1.0) for s in _random_states(10)])
    assert out["w"].shape == (8,)
