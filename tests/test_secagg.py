"""Secure aggregation (SecAgg+): the unmasked sum is the plain sum, drops are survived,
a masked input looks uniform, and the protocol refuses what would leak."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedpeft.aggregation import fedavg
from fedpeft.privacy import clip_delta, delta
from fedpeft.privacy.secagg import (
    FixedPoint,
    MessageError,
    ProtocolError,
    SecAggAborted,
    SecAggClient,
    SecAggServer,
    decode,
    encode,
    neighbour_graph,
    secure_sum,
    seeded_bytes,
    shamir,
    state_from_vector,
    state_vector,
)
from fedpeft.privacy.secagg.crypto import RandomBytes
from fedpeft.privacy.secagg.messages import MaskedInput, Setup, UnmaskRequest

ALPHA = 1e-4


def _inputs(n: int, length: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.normal(scale=0.1, size=length) for u in range(n)}


def _rand(u: int) -> RandomBytes:
    return seeded_bytes(1000 + u)


def test_unmasked_sum_equals_the_plain_sum_within_fixed_point_error() -> None:
    inputs = _inputs(10, 2000)
    fixed = FixedPoint(64, 32)
    result, _ = secure_sum(inputs, fixed=fixed, randbytes=_rand)
    plain = np.sum(list(inputs.values()), axis=0)
    assert result.survivors == tuple(range(10)) and result.dropped == () and result.clamped == 0
    assert np.abs(result.total - plain).max() <= fixed.rounding_error(10)
    coarse = FixedPoint(32, 16)  # fewer bits: a larger, still bounded, error
    rough, _ = secure_sum(inputs, fixed=coarse, randbytes=_rand)
    err = np.abs(rough.total - plain).max()
    assert fixed.rounding_error(10) < err <= coarse.rounding_error(10)


@pytest.mark.parametrize(("neighbours", "fraction"), [(None, 0.5), (6, 0.34)])
def test_thirty_percent_dropping_after_masking_still_recovers_the_survivors_sum(
    neighbours, fraction
) -> None:
    """Clients 0, 3, 6 (30%) vanish once the others have masked with them; client 9 sends
    its input and vanishes before unmasking (its input still counts). SecAgg (all
    neighbours, t = 5 of 9) and SecAgg+ (6 neighbours, t = 3)."""
    inputs = _inputs(10, 500, seed=1)
    result, _ = secure_sum(
        inputs,
        neighbours=neighbours,
        threshold_fraction=fraction,
        drop_after_keys={0, 3, 6},
        drop_after_input={9},
        randbytes=_rand,
    )
    assert result.dropped == (0, 3, 6) and 9 in result.survivors
    plain = np.sum([inputs[u] for u in result.survivors], axis=0)
    assert np.abs(result.total - plain).max() <= FixedPoint().rounding_error(10)
    everyone = np.sum(list(inputs.values()), axis=0)
    assert np.abs(result.total - everyone).max() > 0.01  # the dropped inputs are not in it


def test_too_many_drops_abort_the_round() -> None:
    with pytest.raises(SecAggAborted, match="cannot be recovered"):
        secure_sum(_inputs(6, 10), drop_after_keys={0, 1, 2, 3}, randbytes=_rand)


def test_a_masked_input_looks_uniform() -> None:
    """χ² over the 256 values of every byte of one client's masked all-zero input; the
    unmasked encoding of the same input fails the same test."""
    inputs = {u: np.zeros(4000) for u in range(5)}
    inputs[2] = np.full(4000, 0.25)
    server = SecAggServer(1, list(inputs), 4000, seed=0)
    clients = {u: SecAggClient(u, _rand(u)) for u in inputs}
    keys = {u: clients[u].on_setup(m) for u, m in server.setup().items()}
    shares = {u: clients[u].on_keybook(m) for u, m in server.on_public_keys(keys).items()}
    forwarded = server.on_encrypted_shares(shares)
    masked = clients[2].on_forwarded(forwarded[2], inputs[2])

    def p_value(data: bytes) -> float:
        counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        return float(stats.chisquare(counts).pvalue)

    assert p_value(masked.vector) > ALPHA
    words = np.frombuffer(masked.vector, dtype="<u8")
    assert (
        stats.chisquare(np.bincount((words >> np.uint64(60)).astype(int), minlength=16)).pvalue
        > ALPHA
    )
    plain, _ = FixedPoint().encode(inputs[2], 5)
    assert p_value(FixedPoint().to_bytes(plain)) < 1e-12


@settings(max_examples=25, deadline=None)
@given(
    threshold=st.integers(1, 7),
    extra=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
    subset_seed=st.integers(0, 2**31 - 1),
)
def test_any_t_shares_recover_the_secret_and_fewer_do_not(threshold, extra, seed, subset_seed):
    rand = seeded_bytes(seed)
    secret = rand(32)
    xs = list(range(1, threshold + extra + 1))
    shares = shamir.split(secret, xs, threshold, rand)
    order = np.random.default_rng(subset_seed).permutation(len(shares))
    assert shamir.combine([shares[i] for i in order[:threshold]], threshold) == secret
    if threshold > 1:
        fewer = [shares[i] for i in order[: threshold - 1]]
        with contextlib.suppress(ValueError):  # ValueError: not even a 32-byte secret
            assert shamir.combine(fewer, threshold - 1) != secret


def test_fixed_point_round_trip_and_capacity() -> None:
    fixed = FixedPoint(64, 32)
    x = np.array([0.0, 1.5, -2.25, 1e-9, -1e6])
    q, clamped = fixed.encode(x, clients=3)
    assert clamped == 0
    np.testing.assert_allclose(fixed.decode(q), x, atol=2**-33)
    big = np.array([fixed.capacity(3) * 2, -fixed.capacity(3) * 2])
    q, clamped = fixed.encode(big, clients=3)
    assert clamped == 2
    three = fixed.add(fixed.add(q, q), q)  # at capacity, three of them still do not wrap
    assert np.all(np.sign(fixed.decode(three)) == np.sign(big))
    small = FixedPoint(32, 16)
    data = small.to_bytes(small.encode(x[:4], 2)[0])
    assert len(data) == 16
    np.testing.assert_allclose(small.decode(small.from_bytes(data, 4)), x[:4], atol=2**-17)


def test_messages_round_trip_and_malformed_bytes_are_refused() -> None:
    msg = UnmaskRequest(3, (1, 3, 4), (2,))
    assert decode(encode(msg), UnmaskRequest) == msg
    setup = Setup(1, 0, (1, 2), 2, 10, 64, 32, 3)
    assert decode(encode(setup)) == setup
    wire = encode(MaskedInput(1, b"\x01\x02", 0))
    assert decode(wire).vector == b"\x01\x02"
    deep = b"[" * 5000 + b"]" * 5000  # nested beyond json's recursion limit
    for bad in (b"", b"PKL1" + wire[4:], wire[:-1], wire + b"x", wire[:4] + _u32(deep) + deep):
        with pytest.raises(MessageError):
            decode(bad)
    with pytest.raises(MessageError, match="expected a Setup"):
        decode(wire, Setup)


def _u32(text: bytes) -> bytes:
    return len(text).to_bytes(4, "little")


def _to_unmask(n: int = 5) -> tuple[SecAggServer, dict[int, SecAggClient], dict]:
    inputs = _inputs(n, 20)
    server = SecAggServer(1, list(inputs), 20, seed=0)
    clients = {u: SecAggClient(u, _rand(u)) for u in inputs}
    keys = {u: clients[u].on_setup(m) for u, m in server.setup().items()}
    shares = {u: clients[u].on_keybook(m) for u, m in server.on_public_keys(keys).items()}
    forwarded = server.on_encrypted_shares(shares)
    masked = {u: clients[u].on_forwarded(m, inputs[u]) for u, m in forwarded.items()}
    return server, clients, server.on_masked_inputs(masked)


def test_a_client_never_reveals_both_secrets_of_a_neighbour() -> None:
    _, clients, requests = _to_unmask()
    with pytest.raises(ProtocolError, match="both alive and dropped"):
        clients[0].on_unmask(UnmaskRequest(0, (0, 1, 2, 3), (1,)))
    clients[0].on_unmask(requests[0])
    with pytest.raises(ProtocolError, match="second unmask"):
        clients[0].on_unmask(UnmaskRequest(0, (0,), (1, 2, 3, 4)))


def test_tampered_shares_are_refused() -> None:
    inputs = _inputs(4, 8)
    server = SecAggServer(1, list(inputs), 8, seed=0)
    clients = {u: SecAggClient(u, _rand(u)) for u in inputs}
    keys = {u: clients[u].on_setup(m) for u, m in server.setup().items()}
    shares = {u: clients[u].on_keybook(m) for u, m in server.on_public_keys(keys).items()}
    forwarded = server.on_encrypted_shares(shares)
    ct = dict(forwarded[0].ciphertexts)
    first = next(iter(ct))
    ct[first] = ct[first][:-1] + bytes([ct[first][-1] ^ 1])
    with pytest.raises(ProtocolError, match="authentication"):
        clients[0].on_forwarded(type(forwarded[0])(0, ct), inputs[0])


def test_neighbour_graph_is_symmetric_and_regular() -> None:
    graph = neighbour_graph(range(30), 6, seed=3)
    assert all(len(vs) == 6 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert neighbour_graph(range(5), None, 0) == {
        u: tuple(v for v in range(5) if v != u) for u in range(5)
    }


def test_costs_are_recorded_for_every_stage() -> None:
    result, cost = secure_sum(_inputs(5, 1000), randbytes=_rand)
    assert all(cost.bytes_up[s] > 0 and cost.bytes_down[s] > 0 for s in cost.bytes_up)
    assert cost.bytes_up["masked_input"] >= 5 * 8 * 1000  # 64-bit words
    assert all(v >= 0 for v in (*cost.client_s.values(), *cost.server_s.values()))
    assert set(cost.to_json()) == {"bytes_down", "bytes_up", "client_s", "server_s"}
    del result


def test_weighted_fedavg_of_clipped_deltas_through_secure_aggregation() -> None:
    """Clients clip Δ and send [n_c·Δ̃_c, n_c]; the server divides the sums: FedAvg."""
    gen = torch.Generator().manual_seed(0)
    served = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
    states = {
        u: {k: v + torch.randn(v.shape, generator=gen) for k, v in served.items()} for u in range(4)
    }
    weights = {0: 10.0, 1: 3.0, 2: 7.0, 3: 1.0}
    clipped = {u: clip_delta(delta(s, served), 1.0) for u, s in states.items()}
    vectors = {u: state_vector(clipped[u], weights[u]) for u in states}
    result, _ = secure_sum(vectors, randbytes=_rand)
    summed, total_weight = state_from_vector(result.total, served)
    mean = {k: served[k] + summed[k] / total_weight for k in served}
    expected = fedavg(
        [({k: served[k] + clipped[u][k] for k in served}, weights[u]) for u in states]
    )
    assert total_weight == pytest.approx(21.0, abs=1e-8)
    for k in served:
        torch.testing.assert_close(mean[k].double(), expected[k].double(), atol=1e-6, rtol=1e-6)
