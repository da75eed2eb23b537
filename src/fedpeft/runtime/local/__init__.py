"""In-process simulation runtime (the embedded default)."""

from fedpeft.runtime.local.pool import LocalClientPool, LocalGlobalModel, ParallelClientPool
from fedpeft.runtime.local.simulator import RunResult, run_local

__all__ = ["LocalClientPool", "LocalGlobalModel", "ParallelClientPool", "RunResult", "run_local"]
