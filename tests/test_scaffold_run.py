"""SCAFFOLD in the round loop (``server.aggregator = "scaffold"``): the server's control ``c``
travels beside the adapter, each client keeps its ``c_i`` and replies with ``Δc_i``, and the
server moves ``c ← c + Σ Δc_i / N`` — in process, through forked workers and on Flower, and
across a resume. The maths alone is ``tests/test_drift.py``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.client import ClientStateStore
from fedpeft.client.scaffold import CONTROL, DELTA, LOCAL, under_prefix
from fedpeft.compression import decode, encode
from fedpeft.errors import FedpeftError
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.server import Observer, RunStore
from fedpeft.server.config_checks import check_combinations
from fedpeft.types import AdapterState, RoundRecord, TrainInstruction

SCAFFOLD = "server.aggregator='scaffold'"


def _clients(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "clients.jsonl").read_text().splitlines()]


def _controls(run_dir: Path) -> AdapterState:
    return RunStore(run_dir).load_checkpoint().controls["global"]


class _Recording(LocalClientPool):
    """Keeps every payload's ``c`` and every reply's ``Δc_i``; ``tamper`` may rewrite a
    reply's tensors before it leaves (an attacker or a broken client)."""

    def __init__(self, task, tamper=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(task, states=ClientStateStore())
        self.sent: dict[int, AdapterState] = {}
        self.deltas: dict[tuple[int, int], AdapterState] = {}
        self.tamper = tamper

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        if instruction.kind != "train":  # the head's or bias's statistics: no control travels
            return super().fit(instruction, payload)
        self.sent[instruction.round] = under_prefix(decode(payload)[0], CONTROL)
        tensors, meta = decode(super().fit(instruction, payload))
        if self.tamper is not None:
            tensors = self.tamper(instruction, tensors)
        self.deltas[(instruction.round, instruction.client_id)] = under_prefix(tensors, DELTA)
        return encode(tensors, meta)


def _recorded(tiny, *extra: str, tamper=None):  # type: ignore[no-untyped-def]
    pools: list[_Recording] = []

    def build(task):  # type: ignore[no-untyped-def]
        pools.append(_Recording(task, tamper))
        return pools[-1]

    return run_local(tiny(SCAFFOLD, *extra), pool=build), pools[0]


def test_server_control_is_the_sum_of_accepted_deltas_over_all_clients(tiny) -> None:
    """3 clients, 2 sampled a round, 3 rounds: ``c`` must be Σ_rounds Σ_{i∈S} Δc_i / N with
    N = 3 (not the mean over S), computed here in numpy from the replies' own Δc_i; and,
    since every c_i starts at zero, it equals the mean of all clients' kept c_i."""
    sets = ("data.num_clients=3", "server.fraction=0.5", "run.rounds=3", "data.train_size=96")
    result, pool = _recorded(tiny, *sets, "data.partition='dirichlet'")
    assert all(c["status"] == "ok" for c in _clients(result.run_dir))
    assert any(len(r["sampled"]) < 3 for r in result.rounds)  # |S|/N matters
    control = _controls(result.run_dir)
    expected = {k: sum(d[k].double().numpy() for d in pool.deltas.values()) / 3 for k in control}
    assert max(float(v.abs().max()) for v in control.values()) > 1e-6  # c moved
    for key, value in control.items():
        np.testing.assert_allclose(value.numpy(), expected[key], rtol=1e-5, atol=1e-7)
    kept = [under_prefix(pool.states.load(cid, 99), LOCAL) for cid in range(3)]
    for key, value in control.items():
        mean = sum(c[key].double().numpy() for c in kept if c) / 3
        np.testing.assert_allclose(value.numpy(), mean, rtol=1e-5, atol=1e-7)
    # each round's payload carried the c the previous rounds had made (zeros first)
    assert all(float(v.abs().max()) == 0 for v in pool.sent[1].values())
    for key, value in pool.sent[3].items():  # c is summed in float32: ~1e-8 off on Intel
        first_two = [d for (rnd, _), d in pool.deltas.items() if rnd < 3]
        np.testing.assert_allclose(
            value.numpy(), sum(d[key].double().numpy() for d in first_two) / 3, rtol=1e-5,
            atol=1e-7,
        )  # fmt: skip


def test_the_first_round_is_fedavgs_and_the_second_is_not(tiny) -> None:
    """With c = c_i = 0 the corrected gradient is the gradient: round 1 of SCAFFOLD is
    FedAvg's round 1 exactly; from round 2 the controls move the clients."""
    sets = ("data.partition='dirichlet'", "data.alpha=0.1")
    fedavg = run_local(tiny("run.rounds=1", *sets))
    scaffold = run_local(tiny(SCAFFOLD, "run.rounds=1", *sets))
    assert all(torch.equal(fedavg.state[k], scaffold.state[k]) for k in fedavg.state)
    fedavg2 = run_local(tiny("run.rounds=2", *sets))
    scaffold2 = run_local(tiny(SCAFFOLD, "run.rounds=2", *sets))
    assert any(not torch.equal(fedavg2.state[k], scaffold2.state[k]) for k in fedavg2.state)


def test_the_control_travels_both_ways_and_is_counted(tiny) -> None:
    plain = run_local(tiny("run.rounds=1"))
    scaffold = run_local(tiny(SCAFFOLD, "run.rounds=1"))
    nbytes = sum(v.numel() * 4 for v in plain.state.values())  # c and Δc_i are float32
    for ours, theirs in zip(_clients(scaffold.run_dir), _clients(plain.run_dir), strict=True):
        assert ours["bytes_down"] - theirs["bytes_down"] >= nbytes
        assert ours["bytes_up"] - theirs["bytes_up"] >= nbytes
    states = sorted((scaffold.run_dir / "clients").glob("*/state-*.safetensors"))
    assert len(states) == 2
    kept, _ = decode(states[0].read_bytes())
    assert kept and all(k.startswith(LOCAL) for k in kept)


class _StopAfter(Observer):
    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == 1:
            raise KeyboardInterrupt


def test_a_resumed_scaffold_run_ends_like_the_uninterrupted_one(tiny) -> None:
    cfg = tiny(SCAFFOLD, "run.rounds=3", "data.partition='dirichlet'")
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter())
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    assert RunStore(stopped).checkpoints.rounds()[0] == 1
    assert _controls(stopped)  # c was checkpointed after round 1
    resumed = run_local(cfg, resume=stopped)
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    for key, value in _controls(full.run_dir).items():
        torch.testing.assert_close(_controls(stopped)[key], value, rtol=0, atol=1e-7)


def _nan(ins: TrainInstruction, tensors: AdapterState) -> AdapterState:
    if ins.client_id != 1 or ins.round != 2:
        return tensors
    key = next(k for k in tensors if k.startswith(DELTA))
    return tensors | {key: torch.full_like(tensors[key], float("nan"))}


def _reshaped(ins: TrainInstruction, tensors: AdapterState) -> AdapterState:
    if ins.client_id != 1 or ins.round != 2:
        return tensors
    key = next(k for k in tensors if k.startswith(DELTA))
    return tensors | {key: tensors[key].flatten()[:-1].clone()}


def _dropped(ins: TrainInstruction, tensors: AdapterState) -> AdapterState:
    if ins.client_id != 1 or ins.round != 2:
        return tensors
    return {k: v for k, v in tensors.items() if not k.startswith(DELTA)}


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [(_nan, "NaN or Inf"), (_reshaped, "expected F32 ("), (_dropped, "missing")],
)
def test_a_bad_control_delta_is_rejected_and_the_round_goes_on(tiny, tamper, reason) -> None:
    result, pool = _recorded(tiny, "run.rounds=2", tamper=tamper)
    clients = {(c["round"], c["client_id"]): c for c in _clients(result.run_dir)}
    bad = clients[(2, 1)]
    assert (
        bad["status"] == "rejected"
        and reason in bad["reason"]
        and "x/scaffold/dc/" in (bad["reason"])
    )
    assert all(c["status"] == "ok" for k, c in clients.items() if k != (2, 1))
    assert result.rounds[-1]["accepted"] == 1
    control = _controls(result.run_dir)
    good = [d for k, d in pool.deltas.items() if k != (2, 1)]
    for key, value in control.items():
        expected = sum(d[key].double().numpy() for d in good) / 2
        assert np.isfinite(value.numpy()).all()
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-9)


def test_two_workers_give_bitwise_the_scaffold_run_of_one(tiny) -> None:
    """The kept c_i goes to whichever worker trains the client and comes back with the
    reply (safetensors over the pipe); the server process stores it."""
    pools: list[LocalClientPool] = []

    def run(workers: int):  # type: ignore[no-untyped-def]
        from fedpeft.runtime.local.simulator import client_pool

        def build(task):  # type: ignore[no-untyped-def]
            pools.append(client_pool(task))
            return pools[-1]

        extra = (SCAFFOLD, "data.num_clients=4", "run.rounds=2", f"run.workers={workers}")
        return run_local(tiny(*extra, f"run.name='w{workers}'"), pool=build)

    one, two = run(1), run(2)
    assert type(pools[0]).__name__ == "LocalClientPool"
    assert type(pools[1]).__name__ == "ParallelClientPool"
    assert all(c["status"] == "ok" for c in _clients(two.run_dir))
    assert all(torch.equal(one.state[k], two.state[k]) for k in one.state)
    a, b = _controls(one.run_dir), _controls(two.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for cid in range(4):
        x, y = (p.states.load(cid, 3) for p in pools)
        assert x and all(k.startswith(LOCAL) for k in x)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("server.mode='async'",), "`server.mode`"),
        (("compression.bits_up=8",), "`compression.bits_up`"),
        (("compression.topk=0.1",), "`compression.topk`"),
        (("compression.bits_down=8",), "`compression.bits_down`"),
        (("privacy.mode='local'", "privacy.noise_multiplier=1.0"), "`privacy.mode`"),
        (("privacy.mode='dpsgd'", "privacy.noise_multiplier=1.0"), "`privacy.mode`"),
        (("allocation.enabled=true",), "`allocation.enabled`"),
        (
            ("personalization.mode='lora_b'", "data.client_test_fraction=0.2"),
            "`personalization.mode`",
        ),
    ],
)
def test_combinations_scaffold_cannot_run_are_refused(tiny, overrides, field) -> None:
    cfg = tiny(SCAFFOLD, *overrides)
    with pytest.raises(FedpeftError, match="server.aggregator = 'scaffold'` cannot run") as e:
        check_combinations(cfg)
    assert field in str(e.value)


def test_a_refused_combination_stops_the_run_before_anything_is_written(tiny, tmp_path) -> None:
    cfg = tiny(SCAFFOLD, "compression.bits_up=4")
    with pytest.raises(FedpeftError, match="compression.bits_up"):
        run_local(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_scaffold_on_flower_gives_the_in_process_run(tiny, tmp_path, monkeypatch) -> None:
    """The instruction's objective and the x/… extras cross Flower's messages; each client's
    c_i is kept in its node's Context state, its snapshot on the node's disk."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from fedpeft.runtime.flower.sim import run_flower_sim

    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    cfg = tiny(SCAFFOLD, "data.partition='dirichlet'")
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    assert all(c["status"] == "ok" for c in _clients(flower.run_dir))
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    ours, theirs = _controls(flower.run_dir), _controls(local.run_dir)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)
    assert flower.summary["bytes_down_total"] == local.summary["bytes_down_total"]
    snapshots = sorted((tmp_path / "node").glob(f"*/{flower.run_dir.name}/*/kept.json"))
    assert [p.parent.name for p in snapshots] == ["0", "1"]


def test_grouped_passes_train_scaffold_clients_alone_and_alike(tiny) -> None:
    """A grouped pool (several clients in one pass) trains a SCAFFOLD client on its own,
    with its control: the run is the one-at-a-time run."""
    from fedpeft.runtime.local.simulator import client_pool

    pools: list[LocalClientPool] = []

    def build(task):  # type: ignore[no-untyped-def]
        pools.append(client_pool(task))
        return pools[-1]

    one = run_local(tiny(SCAFFOLD, "run.clients_per_pass=1", "run.name='one'"))
    grouped = run_local(tiny(SCAFFOLD, "run.clients_per_pass=2", "run.name='g'"), pool=build)
    assert type(pools[0]).__name__ == "GroupedClientPool"
    assert all(c["status"] == "ok" for c in _clients(grouped.run_dir))
    assert all(torch.equal(one.state[k], grouped.state[k]) for k in one.state)
    a, b = _controls(one.run_dir), _controls(grouped.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_client_refuses_what_its_half_cannot_do() -> None:
    from fedpeft.client.handler import check_objective
    from fedpeft.client.personal import PersonalPlan

    ins = TrainInstruction(1, 0, 1, None, 8, 0.1, 0.0, 0.0, 0, objective="scaffold")
    check_objective(ins, PersonalPlan(), None)  # plain SCAFFOLD: fine
    with pytest.raises(FedpeftError, match="'fedsplit'"):
        check_objective(replace(ins, objective="fedsplit"), PersonalPlan(), None)
    with pytest.raises(FedpeftError, match="compression"):
        check_objective(replace(ins, compression='{"bits": 8}'), PersonalPlan(), None)
    with pytest.raises(FedpeftError, match="personal"):
        check_objective(ins, PersonalPlan(mode="head", parts=(".classifier.",)), None)


def _huge(ins: TrainInstruction, tensors: AdapterState) -> AdapterState:
    if ins.client_id != 1 or ins.round != 2:
        return tensors
    return {k: v * 1e6 if k.startswith(DELTA) else v for k, v in tensors.items()}


def test_an_outsized_control_delta_is_left_out_of_c(tiny) -> None:
    """A finite Δc_i a million times its peers' passes validation; the norm guard's rule
    (over 10 × the group's median) keeps it out of c, while the client's model update,
    which is honest, still counts."""
    sets = ("data.num_clients=3", "run.rounds=2", "data.train_size=96")
    result, pool = _recorded(tiny, *sets, tamper=_huge)
    assert all(c["status"] == "ok" for c in _clients(result.run_dir))
    control = _controls(result.run_dir)
    good = [d for k, d in pool.deltas.items() if k != (2, 1)]
    assert len(good) == 5
    for key, value in control.items():
        expected = sum(d[key].double().numpy() for d in good) / 3
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-9)
