"""FLoRA (``peft.method = "flora"`` with ``server.aggregator = "flora"``): each round the
server merges the clients' exact stacked product ``Σ p_c B_c A_c`` into the model and
restarts the LoRA. Checked against numpy and a hand-merged base: the method's merged sum is
``W₀ + (α/r)·ΔW``, the server's merge is the stacked product, the payloads carry the merged
sum down only, and the run survives resume, workers, grouping, Flower and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from fedpeft.client import ClientStateStore
from fedpeft.client.handler import MERGED_EXTRA
from fedpeft.compression import decode, encode
from fedpeft.errors import FedpeftError
from fedpeft.peft import (
    get_adapter_state,
    load_adapter,
    model_architecture,
    parse_spec,
    save_adapter,
    set_adapter_state,
)
from fedpeft.peft.flora import merge_and_unload
from fedpeft.peft.share import apply_shared
from fedpeft.runtime.local import LocalClientPool, run_local
from fedpeft.server import Observer, RunStore
from fedpeft.server.config_checks import check_combinations
from fedpeft.server.merge import merge_round
from fedpeft.types import AdapterState, RoundRecord, TrainInstruction
from tests.test_baseline_methods import _batch, _bert

FLORA = ("peft.method='flora'", "server.aggregator='flora'")
MERGED = ".merged_weight"


def _random_merged(state: AdapterState, seed: int = 1) -> AdapterState:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=gen) * 0.1 if k.endswith(MERGED) else v)
        for k, v in state.items()
    }


def _hand_merged(state: AdapterState, scale: float) -> BertForSequenceClassification:
    """A plain BERT whose adapted weights are ``W₀ + scale·ΔW``, written by hand."""
    ref = _bert()
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith(MERGED):
                module = key[: -len(MERGED)].removeprefix("base_model.model.")
                ref.get_submodule(module).weight += scale * value
    return ref


def test_the_merged_sum_acts_as_a_write_into_the_weights() -> None:
    """With B = 0 the FLoRA model is ``W₀ + (α/r)·ΔW``, as if ΔW were merged by hand; the
    shared base is never written, and the state carries one ΔW per adapted layer."""
    base = _bert()
    pristine = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = apply_shared(
        base, parse_spec("flora", {"r": 4, "alpha": 8.0}), model_architecture(base), 0
    )
    state = get_adapter_state(model)
    merged_keys = sorted(k for k in state if k.endswith(MERGED))
    assert len(merged_keys) == 4  # query and value of 2 blocks
    spec, arch = parse_spec("flora", {"r": 4, "alpha": 8.0}), model_architecture(base)
    nbytes = sum(state[k].numel() * state[k].element_size() for k in merged_keys)
    assert spec.down_only_bytes(arch) == nbytes  # what the simulated uplink leaves out
    assert spec.added_params(arch) == parse_spec("lora", {"r": 4}).added_params(arch) + nbytes // 4
    assert all(float(state[k].abs().max()) == 0 for k in merged_keys)  # zeros at the start
    untouched = model(**_batch()).logits
    torch.testing.assert_close(untouched, _bert()(**_batch()).logits, rtol=0, atol=1e-6)
    loaded = _random_merged(state)
    set_adapter_state(model, loaded)
    with torch.no_grad():
        out = model(**_batch()).logits
    assert float((out - untouched).abs().max()) > 1e-3  # ΔW changes the model
    torch.testing.assert_close(out, _hand_merged(loaded, 2.0)(**_batch()).logits, rtol=0, atol=1e-5)
    assert all(torch.equal(p, pristine[n]) for n, p in base.named_parameters())
    with pytest.raises(FedpeftError, match="merged update"):
        set_adapter_state(model, {merged_keys[0]: torch.zeros(3, 3)})


def test_an_exported_flora_folder_loads_back_to_the_same_model(tmp_path: Path) -> None:
    base = _bert()
    spec = parse_spec("flora", {"r": 4, "alpha": 8.0})
    model = apply_shared(base, spec, model_architecture(base), 0)
    state = _random_merged(get_adapter_state(model))
    save_adapter(model, state, tmp_path / "adapter", "tiny", "flora", spec)
    assert (tmp_path / "adapter" / "merged_weights.safetensors").is_file()
    again = load_adapter(_bert(), tmp_path / "adapter").eval()
    expected = model(**_batch()).logits
    torch.testing.assert_close(again(**_batch()).logits, expected)
    plain = merge_and_unload(again)  # ΔW and the LoRA written into the weights
    assert type(plain) is BertForSequenceClassification
    torch.testing.assert_close(plain(**_batch()).logits, expected, rtol=0, atol=1e-5)


def test_the_server_merges_the_stacked_product_and_restarts_the_lora() -> None:
    """Against numpy: ``ΔW' = ΔW + Σ p_c B_c A_c`` (ranks may differ), ``B' = 0``, ``A'``
    fresh within PEFT's Kaiming bound and drawn alike for the same generator seed."""
    rng = np.random.default_rng(0)
    d_in, d_out = 6, 5
    start = {
        "m.lora_A.weight": torch.ones(2, d_in),
        "m.lora_B.weight": torch.ones(d_out, 2),
        "m.merged_weight": torch.tensor(rng.normal(size=(d_out, d_in)), dtype=torch.float32),
        "head.weight": torch.zeros(3),
    }
    updates = []
    for n in (1.0, 3.0):
        a, b = rng.normal(size=(2, d_in)), rng.normal(size=(d_out, 2))
        state = {
            "m.lora_A.weight": torch.tensor(a, dtype=torch.float32),
            "m.lora_B.weight": torch.tensor(b, dtype=torch.float32),
            "head.weight": torch.full((3,), n),
        }
        updates.append((state, n))
    out = merge_round(start, updates, torch.Generator().manual_seed(7))
    expected = start["m.merged_weight"].double().numpy() + sum(
        (n / 4.0) * s["m.lora_B.weight"].double().numpy() @ s["m.lora_A.weight"].double().numpy()
        for s, n in updates
    )
    np.testing.assert_allclose(out["m.merged_weight"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(out["m.lora_B.weight"].abs().max()) == 0
    fresh = out["m.lora_A.weight"]
    assert not torch.equal(fresh, start["m.lora_A.weight"])
    assert float(fresh.abs().max()) <= 1 / math.sqrt(d_in)
    assert torch.equal(
        fresh, merge_round(start, updates, torch.Generator().manual_seed(7))["m.lora_A.weight"]
    )
    assert torch.equal(out["head.weight"], start["head.weight"])  # the rule's, left as it was
    with pytest.raises(ValueError, match="no merged sum"):
        merge_round(
            {k: v for k, v in start.items() if k != "m.merged_weight"}, updates, torch.Generator()
        )


class _Recording(LocalClientPool):
    """Keeps every train payload's merged sums and every reply's tensors."""

    def __init__(self, task) -> None:  # type: ignore[no-untyped-def]
        super().__init__(task, states=ClientStateStore())
        self.sent: dict[int, AdapterState] = {}
        self.replies: dict[tuple[int, int], tuple[AdapterState, int]] = {}

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        reply = super().fit(instruction, payload)
        if instruction.kind == "train":
            down = decode(payload)[0]
            self.sent[instruction.round] = {
                k[len(MERGED_EXTRA) :]: v for k, v in down.items() if k.startswith(MERGED_EXTRA)
            }
            tensors, meta = decode(reply)
            self.replies[(instruction.round, instruction.client_id)] = (
                tensors,
                int(meta["num_examples"]),  # type: ignore[call-overload]
            )
        return reply


def _clients(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "clients.jsonl").read_text().splitlines()]


def _products(
    replies: dict[tuple[int, int], tuple[AdapterState, int]], upto: int
) -> dict[str, np.ndarray]:
    """Σ over rounds ≤ upto of Σ_c p_c B_c A_c, from the replies, in numpy."""
    out: dict[str, np.ndarray] = {}
    for rnd in range(1, upto + 1):
        got = [v for (r, _), v in replies.items() if r == rnd]
        total = sum(n for _, n in got)
        for state, n in got:
            for key, a in state.items():
                if ".lora_A." not in key:
                    continue
                b = state[key.replace(".lora_A.", ".lora_B.")].double().numpy()
                module = key.split(".lora_A.")[0] + MERGED
                out[module] = out.get(module, 0) + (n / total) * b @ a.double().numpy()
    return out


def test_a_run_merges_every_round_and_sends_the_sum_down_only(tiny) -> None:
    """3 rounds: round t's payload carries the products of rounds < t (zeros first), no
    reply carries a merged sum, the final global holds all three rounds' products and a
    zero B, and the downlink counts the dense sums while the uplink does not."""
    pools: list[_Recording] = []

    def build(task):  # type: ignore[no-untyped-def]
        pools.append(_Recording(task))
        return pools[-1]

    result = run_local(tiny(*FLORA, "run.rounds=3", "data.partition='dirichlet'"), pool=build)
    pool = pools[0]
    assert all(c["status"] == "ok" for c in _clients(result.run_dir))
    assert all(float(v.abs().max()) == 0 for v in pool.sent[1].values())
    assert len(pool.sent[1]) == 4
    for key, value in _products(pool.replies, 2).items():
        np.testing.assert_allclose(pool.sent[3][key].numpy(), value, rtol=1e-4, atol=1e-6)
    assert not any(k.endswith(MERGED) for state, _ in pool.replies.values() for k in state)
    final = _products(pool.replies, 3)
    assert final and max(float(np.abs(v).max()) for v in final.values()) > 1e-4
    for key, value in final.items():
        np.testing.assert_allclose(result.state[key].numpy(), value, rtol=1e-4, atol=1e-6)
    assert all(float(v.abs().max()) == 0 for k, v in result.state.items() if ".lora_B." in k)
    dense = sum(v.numel() * 4 for v in pool.sent[1].values())
    plain = run_local(tiny("run.rounds=1", "run.name='plain'"))
    ours, theirs = _clients(result.run_dir)[0], _clients(plain.run_dir)[0]
    assert ours["bytes_down"] - theirs["bytes_down"] >= dense
    assert ours["bytes_up"] < theirs["bytes_up"] + 256  # the LoRA and head, as plain LoRA's


def test_flora_is_not_the_svd_rule_of_the_proposed_variant(tiny) -> None:
    flora = run_local(tiny(*FLORA, "run.name='flora'"))
    svd = run_local(tiny("server.aggregator='exact_lora_svd'", "run.name='svd'"))
    shared = flora.state.keys() & svd.state.keys()
    assert any(not torch.equal(flora.state[k], svd.state[k]) for k in shared)
    assert any(k.endswith(MERGED) for k in flora.state) and not any(
        k.endswith(MERGED) for k in svd.state
    )


class _StopAfter(Observer):
    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == 1:
            raise KeyboardInterrupt


def test_a_resumed_flora_run_ends_like_the_uninterrupted_one(tiny) -> None:
    cfg = tiny(*FLORA, "run.rounds=3", "data.partition='dirichlet'")
    full = run_local(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, observer=_StopAfter())
    stopped = next(p for p in full.run_dir.parent.iterdir() if p != full.run_dir)
    kept = RunStore(stopped).load_checkpoint().adapters["global"]
    assert any(k.endswith(MERGED) and float(v.abs().max()) > 0 for k, v in kept.items())
    resumed = run_local(cfg, resume=stopped)
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6)
    assert resumed.rounds[-1]["eval"] == full.rounds[-1]["eval"]


def test_workers_and_grouped_passes_give_the_one_process_run(tiny) -> None:
    """Forked training and evaluation workers get the merged sums with the adapter; a
    grouped pool trains FLoRA clients one by one (their payload carries extras)."""
    one = run_local(tiny(*FLORA, "data.num_clients=4", "run.workers=1", "run.name='one'"))
    two = run_local(tiny(*FLORA, "data.num_clients=4", "run.workers=2", "run.name='two'"))
    grouped = run_local(
        tiny(
            *FLORA, "data.num_clients=4", "run.workers=1", "run.clients_per_pass=2", "run.name='g'"
        )
    )
    for other in (two, grouped):
        assert all(c["status"] == "ok" for c in _clients(other.run_dir))
        assert all(torch.equal(one.state[k], other.state[k]) for k in one.state)
        assert [r["eval"] for r in other.rounds] == [r["eval"] for r in one.rounds]


def test_a_reply_that_sends_a_merged_sum_back_is_rejected(tiny) -> None:
    """The merged sum is the server's: a client that returns one (to move it) is rejected
    with the reason logged, and the round goes on with the other client."""

    class _Tampering(LocalClientPool):
        def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
            reply = super().fit(instruction, payload)
            if instruction.kind != "train" or instruction.client_id != 1:
                return reply
            tensors, meta = decode(reply)
            down = decode(payload)[0]
            forged = {
                k[len(MERGED_EXTRA) :]: v + 1 for k, v in down.items() if k.startswith(MERGED_EXTRA)
            }
            return encode(tensors | forged, meta)

    result = run_local(tiny(*FLORA), pool=lambda task: _Tampering(task, states=ClientStateStore()))
    bad = [c for c in _clients(result.run_dir) if c["client_id"] == 1]
    assert all(c["status"] == "rejected" and "unexpected tensor" in c["reason"] for c in bad)
    assert all(c["status"] == "ok" for c in _clients(result.run_dir) if c["client_id"] == 0)
    assert all(float(v.abs().max()) < 1 for k, v in result.state.items() if k.endswith(MERGED))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("server.mode='async'",), "`server.mode`"),
        (("compression.bits_down=8",), "`compression.bits_down`"),
        (("privacy.mode='central'", "privacy.noise_multiplier=1.0"), "`privacy.mode`"),
        (("privacy.secure_aggregation=true",), "`privacy.secure_aggregation`"),
        (("allocation.enabled=true",), "`allocation.enabled`"),
        (("server.optimizer='fedadam'",), "`server.optimizer`"),
        (("compression.bits_up=8",), "`compression.error_feedback`"),
        (("compression.topk=0.1",), "`compression.error_feedback`"),
        (("compression.bits_up='adaptive'",), "`compression.bits_up`"),
        (
            ("personalization.mode='lora_b'", "data.client_test_fraction=0.2"),
            "`personalization.mode`",
        ),
    ],
)
def test_combinations_flora_cannot_run_are_refused(tiny, overrides, field) -> None:
    with pytest.raises(FedpeftError, match="server.aggregator = 'flora'` cannot run") as e:
        check_combinations(tiny(*FLORA, *overrides))
    assert field in str(e.value)


def test_a_lossy_uplink_without_error_feedback_runs(tiny) -> None:
    cfg = tiny(*FLORA, "compression.bits_up=8", "compression.error_feedback=false")
    check_combinations(cfg)
    result = run_local(cfg)
    assert all(c["status"] == "ok" for c in _clients(result.run_dir))


@pytest.mark.parametrize("half", FLORA)
def test_the_method_and_the_rule_come_together(tiny, half) -> None:
    with pytest.raises(FedpeftError, match="go together"):
        check_combinations(tiny(half))


def test_flora_on_flower_gives_the_in_process_run(tiny, tmp_path, monkeypatch) -> None:
    """The merged sums cross Flower's messages beside the adapter and are not expected back."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from fedpeft.runtime.flower.sim import run_flower_sim

    monkeypatch.setenv("FEDPEFT_CLIENT_DIR", str(tmp_path / "node"))
    cfg = tiny(*FLORA, "data.partition='dirichlet'")
    local = run_local(cfg)
    flower = run_flower_sim(cfg, workers=2)
    assert all(c["status"] == "ok" for c in _clients(flower.run_dir))
    for key, value in local.state.items():
        torch.testing.assert_close(flower.state[key], value, rtol=0, atol=1e-6)
    assert flower.summary["bytes_down_total"] == local.summary["bytes_down_total"]
