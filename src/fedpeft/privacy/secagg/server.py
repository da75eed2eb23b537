"""The server's half of secure aggregation: routes keys and shares, learns only the sum.

One object per round and cohort. Each ``on_*`` method takes the replies that arrived
(client id → message; a client that did not answer is simply absent, i.e. dropped at that
stage), drops malformed ones, and returns the next stage's message for every client still
in the round. ``on_unmask_shares`` returns the sum of the survivors' inputs::

    Σ_{u∈U3} x_u = Σ_{u∈U3} y_u − Σ_{u∈U3} PRG(b_u)
                   + Σ_{d∈D} Σ_{v∈U3∩N(d)} sign(v, d) · PRG(s_dv)        (mod 2^b)

with U3 the clients whose masked input arrived and D those that shared keys but dropped
before it. The neighbour graph is SecAgg+'s random Harary graph (Bell et al., 2020): the
cohort in a seeded random order, each client linked to the k/2 before and after it on the
ring (k rounded up to even); with k ≥ n − 1 it is the complete graph of the original
SecAgg. A stage that leaves some secret with fewer than t shares aborts the round
(``SecAggAborted``): the sum cannot be recovered and nothing else is revealed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedpeft.errors import FedpeftError
from fedpeft.privacy.secagg import shamir
from fedpeft.privacy.secagg.client import label, mask_sign
from fedpeft.privacy.secagg.crypto import KEY_BYTES, agree, prg, public_key
from fedpeft.privacy.secagg.fixedpoint import FixedPoint
from fedpeft.privacy.secagg.messages import (
    EncryptedShares,
    ForwardedShares,
    KeyBook,
    MaskedInput,
    PublicKeys,
    Setup,
    UnmaskRequest,
    UnmaskShares,
)

M = TypeVar("M")


class SecAggAborted(FedpeftError):
    """Too many clients dropped for the sum to be recovered this round."""


def neighbour_graph(cohort: Sequence[int], k: int | None, seed: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours: complete when ``k`` is None or ≥ n − 1, else a Harary ring."""
    ids = sorted(set(cohort))
    n = len(ids)
    if k is None or k >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    half = max(1, math.ceil(k / 2))
    order = [int(x) for x in np.random.default_rng(seed).permutation(ids)]
    out: dict[int, set[int]] = {u: set() for u in ids}
    for i, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(i + step) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in out.items()}


def threshold_for(neighbours: int, fraction: float) -> int:
    """``t = ⌊fraction · k⌋ + 1`` (a strict majority at 0.5), at most k."""
    return max(1, min(neighbours, math.floor(fraction * neighbours) + 1))


@dataclass(frozen=True)
class SecAggResult:
    total: np.ndarray  # Σ x_u over the survivors, float64
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]  # shared keys, then sent no masked input
    clamped: int  # entries clients clamped to the fixed-point capacity


class SecAggServer:
    def __init__(
        self,
        rnd: int,
        cohort: Sequence[int],
        vector_length: int,
        fixed: FixedPoint | None = None,
        neighbours: int | None = None,
        threshold_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        if len(set(cohort)) < 2:
            raise ValueError("secure aggregation needs at least two clients")
        self.round, self.length = rnd, vector_length
        self.fixed = fixed or FixedPoint()
        self.graph = neighbour_graph(cohort, neighbours, seed)
        self.threshold = threshold_for(min(len(v) for v in self.graph.values()), threshold_fraction)
        self._keys: dict[int, PublicKeys] = {}
        self._shared: dict[int, EncryptedShares] = {}
        self._masked: dict[int, MaskedInput] = {}
        self._sum: np.ndarray | None = None

    def setup(self) -> dict[int, Setup]:
        n, f = len(self.graph), self.fixed
        return {
            u: Setup(self.round, u, vs, self.threshold, self.length, f.bits, f.frac_bits, n)
            for u, vs in self.graph.items()
        }

    def on_public_keys(self, replies: Mapping[int, PublicKeys]) -> dict[int, KeyBook]:
        self._keys = {
            u: r
            for u, r in replies.items()
            if u in self.graph
            and r.client_id == u
            and len(r.channel_key) == len(r.mask_key) == KEY_BYTES
        }
        books = {}
        for u in self._keys:
            peers = [v for v in self.graph[u] if v in self._keys]
            books[u] = KeyBook(
                u,
                {v: self._keys[v].channel_key for v in peers},
                {v: self._keys[v].mask_key for v in peers},
            )
        return self._alive(books, "advertising keys")

    def on_encrypted_shares(
        self, replies: Mapping[int, EncryptedShares]
    ) -> dict[int, ForwardedShares]:
        self._shared = {
            u: r
            for u, r in replies.items()
            if u in self._keys
            and r.client_id == u
            and set(r.ciphertexts) == {v for v in self.graph[u] if v in self._keys}
        }
        inbox: dict[int, dict[int, bytes]] = {u: {} for u in self._shared}
        for u, r in self._shared.items():
            for v, ct in r.ciphertexts.items():
                if v in inbox:
                    inbox[v][u] = ct
        return self._alive({u: ForwardedShares(u, cts) for u, cts in inbox.items()}, "sharing keys")

    def on_masked_inputs(self, replies: Mapping[int, MaskedInput]) -> dict[int, UnmaskRequest]:
        total = np.zeros(self.length, dtype=np.uint64)
        self._masked = {}
        for u, r in replies.items():
            if u not in self._shared or r.client_id != u:
                continue
            try:
                y = self.fixed.from_bytes(r.vector, self.length)
            except ValueError:
                continue
            self._masked[u] = r
            total = self.fixed.add(total, y)
        self._sum = total
        alive, dropped = set(self._masked), set(self._shared) - set(self._masked)
        requests = {
            u: UnmaskRequest(
                u,
                tuple(sorted(({u} | set(self.graph[u])) & alive)),
                tuple(sorted(set(self.graph[u]) & dropped)),
            )
            for u in sorted(alive)
        }
        return self._alive(requests, "sending masked inputs")

    def on_unmask_shares(self, replies: Mapping[int, UnmaskShares]) -> SecAggResult:
        if self._sum is None:
            raise ValueError("unmasking before the masked inputs")
        alive, dropped = set(self._masked), set(self._shared) - set(self._masked)
        seeds: dict[int, list[bytes]] = {u: [] for u in alive}
        keys: dict[int, list[bytes]] = {d: [] for d in dropped}
        for v, r in replies.items():
            if v not in alive or r.client_id != v:
                continue
            for u, share in r.seed_shares.items():
                if u in seeds and u in self.graph[v]:
                    seeds[u].append(share)
            for d, share in r.key_shares.items():
                if d in keys and d in self.graph[v]:
                    keys[d].append(share)
        total = self._sum
        for u in sorted(alive):
            seed = self._recover(seeds[u], u, "self-mask seed")
            total = self.fixed.sub(total, prg(seed, self.length, self.fixed.bits))
        for d in sorted(dropped):
            total = self._remove_pairwise(total, d, self._recover(keys[d], d, "mask key"), alive)
        clamped = sum(r.clamped for r in self._masked.values())
        return SecAggResult(
            self.fixed.decode(total), tuple(sorted(alive)), tuple(sorted(dropped)), clamped
        )

    def _remove_pairwise(self, total: np.ndarray, d: int, sk: bytes, alive: set[int]) -> np.ndarray:
        """Cancels the masks survivors v added for their dropped neighbour d."""
        if public_key(sk) != self._keys[d].mask_key:
            raise SecAggAborted(
                f"secure aggregation round {self.round}: the shares of client {d}'s mask key "
                "do not match its public key; the round's sum cannot be trusted."
            )
        for v in sorted(set(self.graph[d]) & alive):
            mask = prg(
                agree(sk, self._keys[v].mask_key, label(b"mask", self.round)),
                self.length,
                self.fixed.bits,
            )
            total = (
                self.fixed.sub(total, mask) if mask_sign(v, d) > 0 else self.fixed.add(total, mask)
            )
        return total

    def _recover(self, shares: list[bytes], owner: int, what: str) -> bytes:
        try:
            return shamir.combine(shares, self.threshold)
        except ValueError:
            raise SecAggAborted(
                f"secure aggregation round {self.round}: {len(shares)} shares of client "
                f"{owner}'s {what} arrived, {self.threshold} are needed; too many clients "
                "dropped, so this round's sum is lost (lower the threshold or the dropouts)."
            ) from None

    def _alive(self, out: dict[int, M], stage: str) -> dict[int, M]:
        if len(out) < max(2, self.threshold + 1):
            raise SecAggAborted(
                f"secure aggregation round {self.round}: only {len(out)} clients are left "
                f"after {stage}, fewer than the threshold {self.threshold} + 1; this round's "
                "sum cannot be recovered."
            )
        return out
