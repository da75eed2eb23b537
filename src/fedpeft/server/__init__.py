"""Server: the round loops and everything around them (sampling, validation, storage).

Start at ``federation.py`` (what a loop runs on), ``loop.py`` (a round, top to bottom),
``protocols.py`` (what a runtime must offer) and ``state.py`` (what is checkpointed);
``docs/architecture.md`` walks through them.
"""

from fedpeft.server.async_loop import run_async
from fedpeft.server.federation import Federation, LoopResult
from fedpeft.server.loop import run_rounds
from fedpeft.server.protocols import ClientPool, GlobalModel, Observer
from fedpeft.server.state import DEFAULT_GROUP, ServerState
from fedpeft.server.store import RunStore

__all__ = [
    "DEFAULT_GROUP",
    "ClientPool",
    "Federation",
    "GlobalModel",
    "LoopResult",
    "Observer",
    "RunStore",
    "ServerState",
    "run_async",
    "run_rounds",
]
