"""One secure-aggregation round run in process, every message through its byte form.

``secure_sum`` is the reference wiring of ``SecAggServer`` and ``SecAggClient``: the four
round trips as a runtime would make them (encode → bytes → decode at both ends), clients
that drop before or after masking, and the bytes and seconds each side spends. A runtime
maps each stage to one send/receive of its own (see ``docs/privacy.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpeft.privacy.secagg.client import ProtocolError, SecAggClient
from fedpeft.privacy.secagg.crypto import RandomBytes
from fedpeft.privacy.secagg.fixedpoint import FixedPoint
from fedpeft.privacy.secagg.messages import decode, encode
from fedpeft.privacy.secagg.server import SecAggResult, SecAggServer

STAGES = ("setup", "share_keys", "masked_input", "unmask")


@dataclass
class SecAggCost:
    """Bytes each way and seconds on each side, per stage (clients' seconds summed)."""

    bytes_down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    bytes_up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    client_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    server_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "client_s": self.client_s,
            "server_s": self.server_s,
        }


def secure_sum(
    inputs: Mapping[int, np.ndarray],
    *,
    rnd: int = 1,
    fixed: FixedPoint | None = None,
    neighbours: int | None = None,
    threshold_fraction: float = 0.5,
    seed: int = 0,
    drop_after_keys: Collection[int] = (),
    drop_after_input: Collection[int] = (),
    randbytes: Callable[[int], RandomBytes] | None = None,
) -> tuple[SecAggResult, SecAggCost]:
    """The sum of the surviving clients' ``inputs`` (float64 vectors of one length) as the
    server recovers it, and what it cost. ``drop_after_keys`` clients vanish once their
    keys are shared — the others have already masked with them, so the server must rebuild
    their mask keys; ``drop_after_input`` clients vanish after sending their masked input
    (it counts) and before unmasking."""
    length = len(next(iter(inputs.values())))
    server = SecAggServer(rnd, list(inputs), length, fixed, neighbours, threshold_fraction, seed)
    clients = {u: SecAggClient(u, randbytes(u)) if randbytes else SecAggClient(u) for u in inputs}
    cost = SecAggCost()

    def stage(
        name: str, down: Mapping[int, Any], reply: Callable[[int, Any], Any]
    ) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for u, msg in down.items():
            wire = encode(msg)
            cost.bytes_down[name] += len(wire)
            start = time.perf_counter()
            try:
                answer = encode(reply(u, decode(wire, type(msg))))
            except ProtocolError:  # the client refuses this round: it sends nothing more
                continue
            finally:
                cost.client_s[name] += time.perf_counter() - start
            cost.bytes_up[name] += len(answer)
            out[u] = decode(answer)
        return out

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        cost.server_s[name] += time.perf_counter() - start
        return result

    setups = timed("setup", server.setup)
    keys = stage("setup", setups, lambda u, m: clients[u].on_setup(m))
    books = timed("share_keys", lambda: server.on_public_keys(keys))
    shares = stage("share_keys", books, lambda u, m: clients[u].on_keybook(m))
    forwarded = timed("masked_input", lambda: server.on_encrypted_shares(shares))
    forwarded = {u: m for u, m in forwarded.items() if u not in set(drop_after_keys)}
    masked = stage("masked_input", forwarded, lambda u, m: clients[u].on_forwarded(m, inputs[u]))
    requests = timed("unmask", lambda: server.on_masked_inputs(masked))
    requests = {u: m for u, m in requests.items() if u not in set(drop_after_input)}
    answers = stage("unmask", requests, lambda u, m: clients[u].on_unmask(m))
    result = timed("unmask", lambda: server.on_unmask_shares(answers))
    return result, cost
