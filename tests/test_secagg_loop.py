"""Secure aggregation in the real round loop (``server/secure.py``, ``client/secagg.py``):
tiny-bert federations with and without it give the same global within fixed-point error,
the server's masked vectors look uniform, 30% of the clients dropping at the masked stage
still leave the survivors' exact sum, bad sums skip the round, the overhead is recorded,
and what cannot combine is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fedpeft.client.secagg as client_secagg
from fedpeft.client.secagg import (
    KIND_MASKED_INPUT,
    KIND_SETUP,
    KIND_SHARE_KEYS,
    KIND_UNMASK,
    SecretStore,
    handle_secagg,
)
from fedpeft.errors import FedpeftError
from fedpeft.privacy.secagg import FixedPoint, ProtocolError, SecAggClient, SecAggServer
from fedpeft.privacy.secagg.messages import ClientMemory, MaskedInput, decode, encode
from fedpeft.runtime.local import LocalClientPool, ParallelClientPool, run_local
from fedpeft.runtime.local.simulator import client_pool
from fedpeft.server.task import Task
from fedpeft.types import TrainInstruction

SECURE = "privacy.secure_aggregation=true"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=0, atol=atol)


class _Flaky:
    """The real in-process pool; the replies of some clients at one stage are lost on the
    way back (the client did its work, the server never hears from it)."""

    def __init__(self, inner: LocalClientPool, lose: dict[str, set[int]]) -> None:
        self.inner, self.lose = inner, lose
        self.masked: dict[int, bytes] = {}  # what the server received at the masked stage

    def num_examples(self, client_id: int) -> int | None:
        return self.inner.num_examples(client_id)

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        reply = self.inner.fit(instruction, payload)
        if instruction.client_id in self.lose.get(instruction.kind, set()):
            raise ConnectionError(f"lost at {instruction.kind}")
        if instruction.kind == KIND_MASKED_INPUT:
            self.masked[instruction.client_id] = reply
        return reply


def _run(tiny, *extra: str, lose: dict[str, set[int]] | None = None, name: str = "r"):  # type: ignore[no-untyped-def]
    pools: list[_Flaky | LocalClientPool] = []

    def build(task: Task) -> _Flaky | LocalClientPool:
        inner = client_pool(task)
        pools.append(_Flaky(inner, lose) if lose is not None else inner)
        return pools[-1]

    # a random head in every run: secure ones start there, the plain runs they are compared
    # with would otherwise start from the LDA head
    result = run_local(tiny(f"run.name={name!r}", "server.head_init='random'", *extra), pool=build)
    return result, pools[0]


def test_secure_rounds_give_the_federated_average_sequential_and_forked(tiny) -> None:
    extra = ("data.num_clients=4", "run.rounds=2", "data.train_size=96")
    plain, _ = _run(tiny, *extra, "run.workers=1", name="plain")
    secure, seq = _run(tiny, *extra, "run.workers=1", SECURE, name="seq")
    forked, par = _run(tiny, *extra, "run.workers=2", SECURE, name="par")
    assert type(seq) is LocalClientPool and isinstance(par, ParallelClientPool)
    fixed = FixedPoint()
    _close(secure.state, plain.state, atol=1e-6 + fixed.rounding_error(4))
    _close(forked.state, secure.state, atol=0)  # the same clients, the same sums
    lora_b = [v for k, v in secure.state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: the sums moved it
    for result in (secure, forked):
        assert [r["accepted"] for r in result.rounds] == [4, 4]
        assert all(c["status"] == "ok" for c in _lines(result.run_dir / "clients.jsonl"))
        for a, b in zip(result.rounds, plain.rounds, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    for pool in (seq, par):  # the last stage dropped every client's secrets
        assert isinstance(pool, LocalClientPool) and pool.secrets._kept == {}


def test_overhead_is_recorded_per_round_and_per_client(tiny) -> None:
    extra = ("data.num_clients=4", "run.rounds=1", "run.workers=1")
    plain, _ = _run(tiny, *extra, name="plain")
    secure, _ = _run(tiny, *extra, SECURE, name="secure")
    (row,) = secure.rounds
    info = row["secure_aggregation"]
    assert set(info["bytes_up"]) == {"setup", "share_keys", "masked_input", "unmask"}
    assert all(info["bytes_up"][s] > 0 and info["bytes_down"][s] > 0 for s in info["bytes_up"])
    assert all(info["wait_s"][s] > 0 for s in info["wait_s"])
    assert info["survivors"] == 4 and info["dropped_after_keys"] == []
    assert row["bytes_up"] == sum(info["bytes_up"].values())
    assert row["bytes_down"] == sum(info["bytes_down"].values())
    assert "secure_aggregation" not in plain.rounds[0]
    clients = _lines(secure.run_dir / "clients.jsonl")
    plain_clients = _lines(plain.run_dir / "clients.jsonl")
    assert sum(c["bytes_up"] for c in clients) == row["bytes_up"]
    words = 8 * info["vector_length"]  # the masked vector alone: one 64-bit word a value
    for c, p in zip(clients, plain_clients, strict=True):
        assert c["bytes_up"] > words > p["bytes_up"]  # float32 values + the codec's header
        assert c["metrics"]["secagg_round_trip_s"] > 0


def test_the_server_sees_only_uniform_looking_masked_vectors(tiny) -> None:
    result, pool = _run(tiny, "data.num_clients=4", "run.rounds=1", SECURE, lose={})
    assert isinstance(pool, _Flaky) and sorted(pool.masked) == [0, 1, 2, 3]
    fixed = FixedPoint()
    for cid, reply in pool.masked.items():
        msg = decode(reply, MaskedInput)
        words = fixed.from_bytes(msg.vector, len(msg.vector) // 8)
        # an unmasked fixed-point update is tiny: its top bits are all 0s or all 1s
        top = (words >> np.uint64(60)).astype(np.int64)
        counts = np.bincount(top, minlength=16)
        expected = len(words) / 16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # χ²(15) at p = 1e-12: the masks are fresh os.urandom keys each run, so a bound at
        # p = 1e-4 failed about once in 2,500 suites (CI saw 44.65); an unmasked vector's
        # two full bins give a χ² in the tens of thousands
        assert chi2 < 90.0, (cid, chi2)
        assert np.mean((top == 0) | (top == 15)) < 0.25  # uniform: 1/8; unmasked: all
        values = fixed.decode(words)
        assert np.mean(np.abs(values) < 1.0) < 0.01  # real updates: every |value| < 1
        assert abs(values[-2] - pool.num_examples(cid)) > 1  # the count is masked too
    assert result.rounds[0]["accepted"] == 4


def test_thirty_percent_lost_at_the_masked_stage_still_gives_the_survivors_sum(tiny) -> None:
    """Clients 0, 4 and 7 train and mask, but their masked vectors never arrive: their
    neighbours' shares of their mask keys remove their masks. Client 9's unmask shares are
    lost too, after its input arrived: its input still counts. The global must be the
    FedAvg of the other seven clients' updates, as a plain round without 0, 4, 7 gives."""
    extra = ("data.num_clients=10", "run.rounds=1", "data.train_size=160", "run.workers=1")
    dropped = {0, 4, 7}
    plain, _ = _run(tiny, *extra, lose={"train": dropped}, name="plain")
    secure, _ = _run(
        tiny, *extra, SECURE, lose={KIND_MASKED_INPUT: dropped, KIND_UNMASK: {9}}, name="sec"
    )
    _close(secure.state, plain.state, atol=1e-6)
    (row,) = secure.rounds
    assert row["accepted"] == 7 and row["quorum"]
    info = row["secure_aggregation"]
    assert info["survivors"] == 7 and info["dropped_after_keys"] == sorted(dropped)
    clients = {c["client_id"]: c for c in _lines(secure.run_dir / "clients.jsonl")}
    for cid in dropped:
        assert clients[cid]["status"] == "failed" and "masked_input" in clients[cid]["reason"]
    assert clients[9]["status"] == "ok" and "its input counts" in clients[9]["reason"]


def test_too_many_losses_or_a_lying_client_skip_the_round_not_the_run(tiny, monkeypatch) -> None:
    extra = ("data.num_clients=4", "run.rounds=2", "run.workers=1")
    lost, _ = _run(tiny, *extra, SECURE, lose={KIND_UNMASK: {0, 1, 2}}, name="lost")
    assert [r["quorum"] for r in lost.rounds] == [False, False]
    assert all("sum is lost" in r["secure_aggregation"]["skipped"] for r in lost.rounds)
    real = client_secagg.contribution

    def inflated(update, served, ins):  # type: ignore[no-untyped-def]
        vector = real(update, served, ins)
        if ins.client_id == 1:  # claims a million more examples than it holds
            vector[-2] += 1e6
        return vector

    monkeypatch.setattr(client_secagg, "contribution", inflated)
    lying, _ = _run(tiny, *extra, SECURE, name="lying")
    assert [r["quorum"] for r in lying.rounds] == [False, False]
    assert "more than the survivors hold" in lying.rounds[0]["secure_aggregation"]["skipped"]
    clients = _lines(lying.run_dir / "clients.jsonl")
    assert all(c["status"] == "rejected" and "no sum this round" in c["reason"] for c in clients)
    _close(lying.state, lost.state, atol=0)  # both kept the initial global


def test_central_dp_under_secure_aggregation_equals_central_dp(tiny) -> None:
    """Clients clip to S before masking, the server adds N(0, σ²S²) once to the sum and
    divides by m: the same release as DP-FedAvg on the clear updates (same noise stream)."""
    dp = ("privacy.mode='central'", "privacy.noise_multiplier=1.0", "privacy.clip_norm=0.05")
    extra = ("data.num_clients=4", "run.rounds=2", "run.workers=1", *dp)
    central, _ = _run(tiny, *extra, name="central")
    secure, _ = _run(tiny, *extra, SECURE, name="secure")
    _close(secure.state, central.state, atol=1e-5)
    assert [r["privacy"]["epsilon"] for r in secure.rounds] == [
        r["privacy"]["epsilon"] for r in central.rounds
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("allocation.enabled=true",), "allocation"),
        (("compression.bits_up=8",), "compression.bits_up"),
        (("server.clip_norm=1.0",), "server.clip_norm"),
        (("server.head_init='lda'",), "head_init"),
        (("server.aggregator='krum'",), "learns only the sum"),
        (("data.num_clients=2",), "at least 3"),
    ],
)
def test_what_cannot_combine_is_refused_before_anything_runs(
    tiny, extra: tuple[str, ...], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(FedpeftError, match=expected) as info:
        run_local(tiny("data.num_clients=3", SECURE, *extra))
    assert str(info.value).endswith(".") and ". " not in str(info.value)
    assert not (tmp_path / "runs").exists()


def _ins(kind: str, client: int = 0, rnd: int = 1) -> TrainInstruction:
    return TrainInstruction(rnd, client, 1, None, 4, 0.1, 0.0, 0.0, 0, kind=kind)


def test_client_memory_round_trips_and_stages_out_of_order_are_refused() -> None:
    server = SecAggServer(1, [0, 1, 2], 5)
    setups = server.setup()
    never = lambda payload: pytest.fail("no training before the masked stage")  # noqa: E731
    _reply, kept = handle_secagg(_ins(KIND_SETUP), encode(setups[0]), {}, never)
    assert list(kept) == ["secagg/memory"] and kept["secagg/memory"].dtype == torch.uint8
    memory = decode(kept["secagg/memory"].numpy().tobytes(), ClientMemory)
    restored = SecAggClient.restore(memory)
    assert encode(restored.memory()) == encode(memory)
    with pytest.raises(ProtocolError, match="no secure-aggregation state"):
        handle_secagg(_ins(KIND_SHARE_KEYS, client=1), b"", {}, never)
    with pytest.raises(ProtocolError, match="not round 2's"):
        handle_secagg(_ins(KIND_SHARE_KEYS, rnd=2), b"", kept, never)
    store = SecretStore()
    store.save(_ins(KIND_SETUP), kept)
    assert store.load(_ins(KIND_UNMASK)).keys() == kept.keys()
    store.save(_ins(KIND_UNMASK), {})
    assert store.load(_ins(KIND_UNMASK)) == {}
