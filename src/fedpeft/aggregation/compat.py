"""One compatibility check for every rule: the states to combine share one key set (and,
where the rule needs it, one shape per key), and their weights are usable.

Every aggregator, server optimiser and staleness step calls these two functions instead of
writing its own loop; the messages name the rule (``rule``) and may carry a rule-specific
hint (``hint``: what to use instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedpeft.types import AdapterState


def check_states(
    states: Sequence[AdapterState],
    rule: str,
    *,
    reference: AdapterState | None = None,
    shapes: bool = True,
    hint: str = "",
    what: str = "update",
    reference_name: str = "the global state",
) -> None:
    """Raises ``ValueError`` unless every state has the key set of ``reference`` (default:
    the first state) and, with ``shapes``, the same shape for every key.

    ``what`` names the states in the message ("update", "client state", …) and
    ``reference_name`` the reference."""
    if not states:
        raise ValueError(f"{rule} needs at least one {what}")
    ref, ref_name = (states[0], f"{what} 0") if reference is None else (reference, reference_name)
    suffix = f"; {hint}" if hint else ""
    for i, state in enumerate(states):
        if state.keys() != ref.keys():
            odd = sorted(state.keys() ^ ref.keys())[0]
            raise ValueError(f"{rule}: {what} {i} and {ref_name} differ in key {odd!r}{suffix}")
        if not shapes:
            continue
        for key, value in ref.items():
            if state[key].shape != value.shape:
                raise ValueError(
                    f"{rule}: {key!r} is {tuple(state[key].shape)} in {what} {i} but "
                    f"{tuple(value.shape)} in {ref_name}{suffix}"
                )


def normalised_weights(weights: Sequence[float], rule: str) -> list[float]:
    """``p_c = w_c / Σ w`` after checking that every weight is finite and ≥ 0 and that they
    sum to more than 0."""
    ws = [float(w) for w in weights]
    if not ws:
        raise ValueError(f"{rule} needs at least one update")
    if any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError(
            f"{rule} weights must be finite, ≥ 0 and sum to a positive value, got {ws}"
        )
    total = sum(ws)
    return [w / total for w in ws]
