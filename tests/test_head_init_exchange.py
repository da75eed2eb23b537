"""The round-0 statistics exchange holds a bounded number of replies: an in-process batched
pool is sent the round in parts of ``EXCHANGE_PART``, Flower (whose ``server.min_clients``
is a rule over the whole round) all of it at once, a sequential pool one request at a time;
replies come back in request order either way."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.server.head_init import EXCHANGE_PART, _exchange
from fedpeft.server.protocols import BatchedPool, PartedPool
from fedpeft.types import TrainInstruction


def _requests(n: int) -> list[tuple[TrainInstruction, bytes]]:
    return [(TrainInstruction(0, cid, 1, None, 16, 1e-3, 0.0, 0.0, 0), b"") for cid in range(n)]


class _Sequential:
    def __init__(self) -> None:
        self.calls = 0

    def fit(self, ins: TrainInstruction, payload: bytes) -> bytes:
        self.calls += 1
        if ins.client_id == 3:
            raise RuntimeError("client 3 is gone")
        return str(ins.client_id).encode()


class _Batched(_Sequential):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def fit_many(
        self, requests: Sequence[tuple[TrainInstruction, bytes]]
    ) -> list[bytes | Exception]:
        self.sizes.append(len(requests))
        return [str(ins.client_id).encode() for ins, _ in requests]


class _Parted(_Batched):
    def fit_part(
        self, requests: Sequence[tuple[TrainInstruction, bytes]]
    ) -> list[bytes | Exception]:
        return self.fit_many(requests)


def test_an_in_process_batched_pool_is_sent_the_round_in_parts_in_order() -> None:
    pool = _Parted()
    assert isinstance(pool, PartedPool)
    n = 2 * EXCHANGE_PART + 5
    replies = _exchange(pool, _requests(n))  # type: ignore[arg-type]
    assert pool.sizes == []  # nothing is asked before the caller reads
    got = [next(replies) for _ in range(EXCHANGE_PART)]
    assert pool.sizes == [EXCHANGE_PART]  # one part answered, the next not yet sent
    got += list(replies)
    assert pool.sizes == [EXCHANGE_PART, EXCHANGE_PART, 5]
    assert got == [str(c).encode() for c in range(n)]


def test_flower_gets_the_whole_round_and_a_sequential_pool_one_request_at_a_time() -> None:
    flower = _Batched()
    assert isinstance(flower, BatchedPool) and not isinstance(flower, PartedPool)
    n = 2 * EXCHANGE_PART + 5
    assert list(_exchange(flower, _requests(n))) == [str(c).encode() for c in range(n)]  # type: ignore[arg-type]
    assert flower.sizes == [n]
    one = _Sequential()
    replies = _exchange(one, _requests(5))  # type: ignore[arg-type]
    assert [next(replies), next(replies)] == [b"0", b"1"] and one.calls == 2
    rest = list(replies)
    assert rest[:1] == [b"2"] and isinstance(rest[1], RuntimeError) and rest[2] == b"4"
