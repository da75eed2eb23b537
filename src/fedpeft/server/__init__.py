"""Server: the round loop and everything around it (sampling, validation, storage)."""

from fedpeft.server.collect import ClientPool
from fedpeft.server.loop import (
    GlobalModel,
    LoopResult,
    Observer,
    ServerState,
    run_rounds,
)
from fedpeft.server.store import RunStore

__all__ = [
    "ClientPool",
    "GlobalModel",
    "LoopResult",
    "Observer",
    "RunStore",
    "ServerState",
    "run_rounds",
]
