"""In-process simulation runtime (the embedded default)."""

from fedpeft.runtime.local.pool import LocalClientPool, LocalGlobalModel
from fedpeft.runtime.local.simulator import RunResult, run_local

__all__ = ["LocalClientPool", "LocalGlobalModel", "RunResult", "run_local"]
