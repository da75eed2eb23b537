"""The one error type for people: bad configs, missing files, corrupted runs.

The CLI prints its message as one sentence and exits with code 2, without a traceback.
"""

from fedpeft.types import ClientStatus


class FedpeftError(Exception):
    """A problem the user can fix: the message says what, where, and what to do."""


def refuse_first(rule: str, refusals: tuple[tuple[bool, str], ...]) -> None:
    """Raises for the first ``(bad, why)`` that is bad: "`rule` cannot run here: why." (the
    config checks of rules with a client or server half, e.g. SCAFFOLD and FLoRA)."""
    for bad, why in refusals:
        if bad:
            raise FedpeftError(f"{rule} cannot run here: {why}.")


class ClientSkipped(Exception):
    """A sampled client that does not train this round (a runtime's decision, e.g. a
    simulated device that is offline or would miss the deadline); ``status`` says why."""

    def __init__(self, status: ClientStatus, reason: str, sim_time_s: float | None = None) -> None:
        if not status.skipped:
            raise ValueError(f"{status!r} is not a skipped status")
        super().__init__(reason)
        self.status = status
        self.sim_time_s = sim_time_s
