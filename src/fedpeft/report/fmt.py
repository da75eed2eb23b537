"""Number formatting that survives what a run can legitimately lack: a round in which no
update was accepted (nothing uploaded, train loss of no one), a run with no round at all,
an evaluation without some metric. A missing or non-finite value prints as ``—``."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def num(value: Any, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``, or ``—`` if it is not a finite number."""
    if finite(value) is None:
        return MISSING
    return format(value, spec)


def scaled(value: Any, divisor: float, spec: str = ".2f") -> str:
    """``value / divisor`` formatted, or ``—``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    return num(value / divisor, spec)


def share_of_full_model(fraction: Any) -> str:
    """``1/N of the full model`` for a positive fraction; ``nothing`` when no byte went up."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        return MISSING
    if fraction == 0:
        return "nothing"
    if not math.isfinite(fraction) or fraction < 0:
        return MISSING
    return f"1/{1 / fraction:.0f}"


def clients_text(record: dict[str, Any]) -> str:
    """``accepted/sampled`` of a round record."""
    sampled = record.get("sampled")
    total = len(sampled) if isinstance(sampled, list) else MISSING
    return f"{record.get('accepted', MISSING)}/{total}"


def eval_of(record: dict[str, Any]) -> dict[str, Any]:
    """A round's evaluation (an empty dict when it has none)."""
    e = record.get("eval")
    return e if isinstance(e, dict) else {}
