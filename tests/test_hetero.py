"""Heterogeneous federations: envelope maths, shared-base models, allocation in the run
loop (mixed ranks and methods), simulated devices, and resume of all of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.aggregation import fedavg
from fedpeft.aggregation.hetero import aggregate_partial, client_view, extend_envelope, lift
from fedpeft.config import AllocationConfig
from fedpeft.models import get_model_spec, load_classifier
from fedpeft.peft import architecture, parse_spec
from fedpeft.peft.share import apply_shared
from fedpeft.runtime.local import run_local
from fedpeft.server import RunStore

A, B = "m.lora_A.weight", "m.lora_B.weight"


def _lora(rank: int, seed: int, d_in: int = 6, d_out: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        A: torch.randn(rank, d_in, generator=g),
        B: torch.randn(d_out, rank, generator=g),
        "head.weight": torch.randn(2, 3, generator=g),
    }


def test_a_view_keeps_the_envelopes_delta_w_on_its_rank() -> None:
    env = _lora(4, 0)
    view = client_view(env, _lora(2, 1), alpha=4.0)  # client scale α/r = 2
    assert view[A].shape == (2, 6) and view[B].shape == (5, 2)
    torch.testing.assert_close(2.0 * view[B] @ view[A], env[B][:, :2] @ env[A][:2])
    torch.testing.assert_close(view["head.weight"], env["head.weight"])


def test_lift_pads_with_zeros_and_folds_the_scale() -> None:
    env = _lora(4, 0)
    client = _lora(2, 3)
    lifted = lift(client, env, alpha=4.0)
    assert torch.equal(lifted[A][2:], torch.zeros(2, 6))
    assert torch.equal(lifted[B][:, 2:], torch.zeros(5, 2))
    torch.testing.assert_close(lifted[B][:, :2], 2.0 * client[B])
    # the lifted update computes the client's own ΔW = (α/r)·B·A
    torch.testing.assert_close(lifted[B] @ lifted[A], 2.0 * client[B] @ client[A])


def test_lift_keep_tail_pads_with_the_envelopes_own_components() -> None:
    env = _lora(4, 0)
    client = _lora(2, 3)
    lifted = lift(client, env, alpha=4.0, keep_tail=True)
    assert torch.equal(lifted[A][2:], env[A][2:])
    assert torch.equal(lifted[B][:, 2:], env[B][:, 2:])
    torch.testing.assert_close(lifted[B][:, :2], 2.0 * client[B])
    torch.testing.assert_close(lifted[A][:2], client[A])
    assert not torch.equal(env[A][2:], torch.zeros(2, 6))  # a tail zero-padding would lose


def test_components_no_client_trains_keep_their_value_with_keep_tail() -> None:
    """A round whose clients all train below the envelope's rank: zero-padding erases the
    envelope's tail; with ``keep_tail`` FedAvg leaves it exactly as it was, and with one
    full-rank client it moves by that client's share."""
    env = _lora(4, 0)
    low = [(lift(_lora(2, s), env, 4.0, keep_tail=True), 1.0) for s in (1, 2)]
    kept = fedavg(low)
    assert torch.equal(kept[A][2:], env[A][2:]) and torch.equal(kept[B][:, 2:], env[B][:, 2:])
    erased = fedavg([(lift(_lora(2, s), env, 4.0), 1.0) for s in (1, 2)])
    assert torch.equal(erased[A][2:], torch.zeros(2, 6))
    full = _lora(4, 7)
    mixed = fedavg([*low, (lift(full, env, 4.0, keep_tail=True), 1.0)])
    torch.testing.assert_close(mixed[A][2:], env[A][2:] + (full[A][2:] - env[A][2:]) / 3)


def test_extend_envelope_grows_rank_without_changing_delta_w() -> None:
    env = _lora(2, 0)
    grown = extend_envelope(env, _lora(4, 5), alpha=4.0)
    assert grown[A].shape == (4, 6) and grown[B].shape == (5, 4)
    torch.testing.assert_close(grown[B] @ grown[A], env[B] @ env[A])
    assert torch.equal(grown[A][2:], _lora(4, 5)[A][2:])  # new directions start from the init


def test_aggregate_partial_averages_each_key_over_its_holders() -> None:
    current = {"x": torch.zeros(3), "y": torch.zeros(3), "z": torch.full((3,), 7.0)}
    ups = [
        ({"x": torch.tensor([1.0, 2, 3]), "y": torch.tensor([4.0, 4, 4])}, 1.0),
        ({"x": torch.tensor([3.0, 2, 1])}, 3.0),
        ({"x": torch.tensor([0.0, 0, 0]), "y": torch.tensor([1.0, 1, 1])}, 2.0),
    ]
    out = aggregate_partial(ups, current, fedavg)
    xs = np.stack([[1, 2, 3], [3, 2, 1], [0, 0, 0]])
    np.testing.assert_allclose(out["x"].numpy(), np.average(xs, axis=0, weights=[1, 3, 2]))
    np.testing.assert_allclose(out["y"].numpy(), np.average([[4] * 3, [1] * 3], 0, [1, 2]))
    assert torch.equal(out["z"], current["z"])  # held by nobody: unchanged
    assert torch.equal(current["x"], torch.zeros(3))  # inputs are not changed


def test_aggregate_partial_dilute_moves_a_key_by_its_holders_share() -> None:
    current = {"x": torch.ones(3), "y": torch.ones(3)}
    ups = [
        ({"x": torch.full((3,), 3.0), "y": torch.full((3,), 5.0)}, 1.0),
        ({"x": torch.full((3,), 7.0)}, 3.0),
    ]
    out = aggregate_partial(ups, current, fedavg, dilute=True)
    np.testing.assert_allclose(out["x"].numpy(), [6.0] * 3)  # held by all: the plain average
    np.testing.assert_allclose(out["y"].numpy(), [1.0 + 0.25 * 4.0] * 3)  # ¼ of the weight
    held = aggregate_partial(ups, current, fedavg)
    np.testing.assert_allclose(held["y"].numpy(), [5.0] * 3)  # the default: holders only


def test_aggregate_partial_is_the_rule_itself_when_everyone_holds_everything() -> None:
    ups = [(_lora(2, i), float(i + 1)) for i in range(3)]
    out = aggregate_partial(ups, _lora(2, 9), fedavg)
    for key, value in fedavg(ups).items():
        assert torch.equal(out[key], value)


def test_methods_on_one_base_share_its_frozen_tensors_and_train_their_own() -> None:
    base = load_classifier(get_model_spec("tiny-bert"), 2, 0)
    arch = architecture(base.config, 2)
    models = {m: apply_shared(base, parse_spec(m, {}), arch, 0) for m in ("lora", "bitfit", "head")}
    base_ids = {id(p) for p in base.parameters()}
    for name, model in models.items():
        trained = [p for p in model.parameters() if p.requires_grad]
        assert trained and not any(id(p) in base_ids for p in trained), name
        assert sum(id(p) in base_ids for p in model.parameters()) > 10, name  # shared, no copy
    x, y = torch.randint(0, 100, (4, 8)), torch.tensor([0, 1, 0, 1])
    models["lora"].eval()
    before = models["lora"](input_ids=x).logits.detach()
    model = models["bitfit"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(input_ids=x, labels=y).loss.backward()
    opt.step()
    torch.testing.assert_close(models["lora"](input_ids=x).logits, before, rtol=0, atol=0)
    assert not any(p.requires_grad for p in base.parameters())


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


TIERED = [
    "allocation.enabled=true",
    "allocation.policy='tiered'",
    "allocation.tiers={a={method='lora',options={r=4,alpha=8}},"
    "b={method='lora',options={r=2,alpha=4,layers=[1]}},c={method='bitfit',options={}}}",
    "profiles.mix=['a','b','c','a']",
    "data.num_clients=4",
]


def _tiers(tmp_path: Path, **fields: dict[str, object]) -> str:
    rows = []
    for name, values in fields.items():
        rows.append(
            f"[{name}]\nbase = 'high'\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
        )
    path = tmp_path / "tiers.toml"
    path.write_text("\n".join(rows))
    return f"profiles.file={str(path)!r}"


def test_mixed_ranks_and_methods_train_in_groups(tiny, tmp_path: Path) -> None:
    tiers = _tiers(tmp_path, a={}, b={}, c={})
    result = run_local(tiny(*TIERED, tiers))
    root = result.run_dir
    clients = _lines(root / "clients.jsonl")
    assert {(c["client_id"], c["group"], c["config"]) for c in clients if c["round"] == 1} == {
        (0, "lora", "lora(alpha=8, r=4)"),
        (1, "lora", "lora(alpha=4, layers=[1], r=2)"),
        (2, "bitfit", "bitfit"),
        (3, "lora", "lora(alpha=8, r=4)"),
    }
    assert all(c["status"] == "ok" for c in clients)
    rounds = _lines(root / "metrics.jsonl")
    assert set(rounds[-1]["groups"]) == {"lora", "bitfit"}
    assert rounds[-1]["eval"] == rounds[-1]["groups"]["lora"]  # the group with most examples
    # the rank-2, layer-1-only client received exactly its slice: smaller payloads
    down = {c["client_id"]: c["bytes_down"] for c in clients if c["round"] == 2}
    assert down[1] < down[0]
    assert (root / "adapters" / "lora" / "adapter_config.json").is_file()
    assert (root / "adapters" / "bitfit").is_dir() and (root / "adapter").is_dir()
    cfg = json.loads((root / "adapters" / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4  # evaluated (and exported) at the envelope's rank


def test_a_heterogeneous_run_resumes_to_the_same_adapters(tiny, tmp_path: Path) -> None:
    tiers = _tiers(tmp_path, a={}, b={}, c={})
    cfg = tiny(*TIERED, tiers, "run.rounds=3")
    full = run_local(cfg)

    from fedpeft.server import Observer

    class Stop(Observer):
        def on_round_start(self, rnd, sampled):  # noqa: ANN001, ANN202
            if rnd == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=Stop())  # type: ignore[arg-type]
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    resumed = run_local(cfg, resume=stopped)
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    assert resumed.rounds[-1]["groups"] == full.rounds[-1]["groups"]


def test_simulated_devices_drop_stragglers_offline_and_unfit_clients(tiny, tmp_path: Path) -> None:
    tiers = _tiers(
        tmp_path,
        fast={},
        slow={"flops_per_s": 1e3},  # far past any deadline
        away={"availability": 0.0},
        small={"memory_bytes": 1024},  # 1 KiB: nothing fits
    )
    cfg = tiny(
        tiers,
        "profiles.mix=['fast','slow','away','small']",
        "data.num_clients=4",
        "simulation.devices=true",
        "allocation.deadline_s=30",
    )
    result = run_local(cfg)
    clients = _lines(result.run_dir / "clients.jsonl")
    status = {c["client_id"]: c["status"] for c in clients if c["round"] == 2}
    assert status == {0: "ok", 1: "straggler", 2: "offline", 3: "refused"}
    by_id = {c["client_id"]: c for c in clients if c["round"] == 2}
    assert by_id[0]["sim_time_s"] > 0 and by_id[2]["bytes_down"] == 0
    assert "deadline" in by_id[1]["reason"] and "GiB" in by_id[3]["reason"]
    rounds = result.rounds
    assert rounds[0]["sim_time_s"] == 30  # a straggler holds the round to its deadline
    assert rounds[1]["sim_clock_s"] == pytest.approx(60)
    assert all(r["accepted"] == 1 for r in rounds)


def test_simulated_time_is_the_slowest_finished_client(tiny, tmp_path: Path) -> None:
    tiers = _tiers(tmp_path, fast={}, slower={"flops_per_s": 5e9})
    cfg = tiny(tiers, "profiles.mix=['fast','slower']", "simulation.devices=true")
    result = run_local(cfg)
    clients = [c for c in _lines(result.run_dir / "clients.jsonl") if c["round"] == 1]
    times = {c["client_id"]: c["sim_time_s"] for c in clients}
    assert times[1] > times[0] > 0
    assert result.rounds[0]["sim_time_s"] == pytest.approx(times[1])


def test_utility_allocation_runs_and_records_its_decisions(tiny) -> None:
    cfg = tiny(
        "allocation.enabled=true",
        "allocation.policy='utility'",
        "allocation.catalogue={lora_ranks=[2,4],lora_depths=[1.0],adapter_methods=[],"
        "prompt_tokens=[],others=['bitfit']}",
        "data.num_clients=3",
    )
    result = run_local(cfg)
    clients = _lines(result.run_dir / "clients.jsonl")
    assert all(c["status"] == "ok" and c["config"] for c in clients)
    state = RunStore(result.run_dir).load_checkpoint()
    assert state.gain is not None and state.gain.counts  # R observed the round's gains
    decisions = _lines(result.run_dir / "allocations.jsonl")
    assert len(decisions) == 3 * 2 and all(d["policy"] == "utility" for d in decisions)
    assert all(len(d["candidates"]) == 3 for d in decisions)  # every candidate is explained
    chosen = {(d["round"], d["client"]): d["chosen"]["name"] for d in decisions}
    assert {(c["round"], c["client_id"]): c["config"] for c in clients} == chosen


@pytest.mark.parametrize("extra", [(), ("allocation.enabled=true", "allocation.policy='tiered'")])
def test_the_logged_evaluation_is_the_saved_adapters(tiny, tmp_path: Path, extra) -> None:
    """What metrics.jsonl reports is what the exported adapter scores (a LoRA run alone, and
    a LoRA group evaluated at its envelope)."""
    from fedpeft.peft import load_adapter
    from fedpeft.server.evaluate import evaluate_model
    from fedpeft.server.task import build_task

    sets = [*extra]
    if extra:
        sets += [
            "allocation.tiers={a={method='lora',options={r=4,alpha=8}},"
            "b={method='lora',options={r=2,alpha=8}}}",
            "profiles.mix=['a','b']",
            _tiers(tmp_path, a={}, b={}),
        ]
    cfg = tiny(*sets, "client.lr=0.05")  # LoRA B far from zero, so a misscaled B shows
    result = run_local(cfg)
    task = build_task(cfg)
    model = load_adapter(task.base, result.run_dir / "adapter")
    again = evaluate_model(model, task.data.eval, 64, torch.device("cpu"))
    logged = result.rounds[-1]["eval"]
    assert again["loss"] == pytest.approx(logged["loss"], rel=1e-5)
    assert again["accuracy"] == logged["accuracy"]


def test_partial_keys_default_to_holders_and_auto_dilutes_for_the_utility_policy_only() -> None:
    assert not AllocationConfig().dilutes  # the default: holders, whatever the policy
    assert not AllocationConfig(policy="fedra").dilutes
    assert AllocationConfig(partial_keys="auto").dilutes  # as written by older runs
    assert not AllocationConfig(policy="fedra", partial_keys="auto").dilutes
    assert AllocationConfig(policy="fedra", partial_keys="all").dilutes


def _two_tiers(tmp_path: Path, b_options: str) -> list[str]:
    """One round, three clients: tier ``a`` (one client) LoRA r = 4 on every block, tier
    ``b`` (two) LoRA with ``b_options``."""
    return [
        "allocation.enabled=true",
        "allocation.policy='tiered'",
        "allocation.tiers={a={method='lora',options={r=4,alpha=8}},"
        f"b={{method='lora',options={{{b_options}}}}}}}",
        "profiles.mix=['a','b','b']",
        "data.num_clients=3",
        "run.rounds=1",
        _tiers(tmp_path, a={}, b={}),
    ]


def test_partial_keys_all_moves_a_deep_block_by_its_holders_share(tiny, tmp_path: Path) -> None:
    """``allocation.partial_keys = 'all'``: block 0's LoRA, which only tier ``a`` trains, moves
    by ``a``'s share of the round's examples; block 1, which both tiers train, is averaged
    as before. B starts at zero, so after one round ``B_all = share · B_holders``."""
    two = _two_tiers(tmp_path, "r=4,alpha=8,layers=[1]")
    held = run_local(tiny(*two)).state  # the default: averaged over holders
    spread = run_local(tiny(*two, "allocation.partial_keys='all'"))
    clients = _lines(spread.run_dir / "clients.jsonl")
    n = {c["client_id"]: c["num_examples"] for c in clients}
    share = n[0] / sum(n.values())
    deep = [k for k in held if ".layer.0." in k and "lora_B" in k]
    shallow = [k for k in held if ".layer.1." in k and "lora" in k]
    assert deep and shallow and 0 < share < 1
    for key in deep:
        assert held[key].abs().sum() > 0
        torch.testing.assert_close(spread.state[key], share * held[key], rtol=1e-5, atol=1e-7)
    for key in shallow:
        torch.testing.assert_close(spread.state[key], held[key], rtol=0, atol=0)


def test_rank_tail_keep_leaves_components_past_a_clients_rank_to_the_others(
    tiny, tmp_path: Path
) -> None:
    """``allocation.rank_tail``: tier ``a`` trains r = 4, tier ``b`` r = 2 on the same
    blocks. Zero-padding moves A's rows 3–4 to ``share_a · A_a`` (towards zero); with
    ``keep`` the ``b`` clients count as no change there, so the rows stay near where they
    started (A barely moves in one round: B starts at zero)."""
    two = _two_tiers(tmp_path, "r=2,alpha=4")
    zero = run_local(tiny(*two)).state
    kept = run_local(tiny(*two, "allocation.rank_tail='keep'"))
    n = {c["client_id"]: c["num_examples"] for c in _lines(kept.run_dir / "clients.jsonl")}
    share = n[0] / sum(n.values())
    a_keys = [k for k in zero if "lora_A" in k]
    assert a_keys and 0 < share < 1
    for key in a_keys:
        assert zero[key].shape[0] == kept.state[key].shape[0] == 4
        tail_zero, tail_kept = zero[key][2:], kept.state[key][2:]
        assert tail_kept.norm() > 0
        torch.testing.assert_close(tail_zero, share * tail_kept, rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(zero[key][:2], kept.state[key][:2])  # trained by all
