"""What the round loops need from a runtime, as typed protocols.

A runtime hands the loops a client pool and a server-side model. The base protocols
(``ClientPool``, ``GlobalModel``) are what every runtime must offer; the rest are
capabilities a runtime may add, which the loops test with ``isinstance`` (never
``getattr``), so mypy checks each runtime against exactly what the loops call:

| capability | used for |
| --- | --- |
| ``BatchedPool.fit_many`` | a whole round's messages at once (Flower) |
| ``PartedPool.fit_part`` | any part of a round at once (no whole-round rule): bounded replies |
| ``ProfiledPool.resources`` / ``data_profile`` | the allocation, per-tier records |
| ``SimulatedPool.sim_seconds`` | simulated round time of a client that trained |
| ``EvaluatingPool.evaluate_many`` | clients scored on their own held-out data (personalisation) |
| ``ProxyModel.proxy_loss`` | rules that weigh clients by a server-side loss (layer-wise) |
| ``FusingModel.fuse`` | fusion across method groups (distillation) |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from fedpeft.data import DataProfile
from fedpeft.profiling import ResourceProfile
from fedpeft.types import AdapterState, ClientRecord, RoundRecord, TrainInstruction

Request = tuple[TrainInstruction, bytes]
"""One client's instruction and the encoded state it starts from."""


class ClientPool(Protocol):
    """How the server reaches clients: bytes in, bytes out."""

    def fit(self, instruction: TrainInstruction, payload: bytes) -> bytes:
        """The client's encoded reply; raises ``ClientSkipped`` for a client that does not
        train this round, anything else for one that failed."""
        ...

    def num_examples(self, client_id: int) -> int | None:
        """How many examples the client reported having (None: unknown)."""
        ...


@runtime_checkable
class BatchedPool(Protocol):
    """Sends a whole round at once; replies (or why not) in request order."""

    def fit_many(self, requests: Sequence[Request]) -> list[bytes | Exception]: ...


@runtime_checkable
class PartedPool(Protocol):
    """A batched pool that may be sent a round in parts (in-process pools: no rule such as
    Flower's ``server.min_clients`` applies to one call), so a caller can bound how many
    replies it holds at once."""

    def fit_part(self, requests: Sequence[Request]) -> list[bytes | Exception]: ...


@runtime_checkable
class ProfiledPool(Protocol):
    """Knows each client's device and data profile (declared or reported)."""

    def resources(self, client_id: int) -> ResourceProfile | None: ...

    def data_profile(self, client_id: int) -> DataProfile | None: ...


@runtime_checkable
class SimulatedPool(Protocol):
    """Simulates devices: the simulated seconds a client's round trip took."""

    def sim_seconds(self, rnd: int, client_id: int) -> float | None: ...


@runtime_checkable
class EvaluatingPool(Protocol):
    """Asks clients to score their models on their own held-out share (``client/evaluate.py``);
    replies (metrics only, no tensors) or why not, in request order."""

    def evaluate_many(self, requests: Sequence[Request]) -> list[bytes | Exception]: ...


class GlobalModel(Protocol):
    """The server's copy of the model: central evaluation and configurations' templates."""

    def evaluate(
        self, state: AdapterState, method: str = "", options: str = "{}"
    ) -> dict[str, float]: ...

    def template(self, method: str, options: str) -> AdapterState: ...


@runtime_checkable
class ProxyModel(Protocol):
    """Holds a proxy set of examples no client trains on, and scores a state on it."""

    def proxy_loss(self, state: AdapterState, method: str = "", options: str = "{}") -> float: ...


@runtime_checkable
class FusingModel(Protocol):
    """Runs a fusion step (``server.fusion``) over every group's model on the proxy set."""

    def fuse(
        self,
        fuse: Callable[..., dict[str, AdapterState]],
        states: Mapping[str, tuple[AdapterState, str, str]],
    ) -> dict[str, AdapterState]: ...


class Observer:
    """Progress hooks; the default does nothing. The CLI's draws progress bars."""

    def on_run_start(self, run_dir: Path) -> None: ...  # the run folder, before round 1
    def on_round_start(self, rnd: int, sampled: Sequence[int]) -> None: ...
    def on_client_done(self, rnd: int, record: ClientRecord) -> None: ...
    def on_round_end(self, record: RoundRecord) -> None: ...


DurationFn = Callable[[int, int, dict[str, float], int, int], float]
"""``(client_id, version, reply_metrics, bytes_down, bytes_up) → simulated seconds``: how
long a client's round trip takes on the asynchronous loop's simulated clock."""

__all__ = [
    "BatchedPool",
    "ClientPool",
    "DurationFn",
    "EvaluatingPool",
    "FusingModel",
    "GlobalModel",
    "Observer",
    "PartedPool",
    "ProfiledPool",
    "ProxyModel",
    "Request",
    "SimulatedPool",
]
